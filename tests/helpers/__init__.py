"""What tests of several subpackages share: tiny models, datasets on disk, app scenes."""
