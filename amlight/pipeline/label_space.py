"""The label space a pipeline folder carries: how to read a label PNG without the dataset's files.

A component of :class:`~amlight.pipeline.synthesis.AMPipeline` saved as ``label_space/config.json``
(class names, colours, ignore index, the decoding settings of ``amlight.data.io.load_labels`` and the
prompt the model was trained with), so that a folder alone turns a palette-colour or index PNG into
class indices, exactly as the dataset it was trained on would.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin

from amlight.data.io import LABEL_FORMATS, UNKNOWN_COLOR_POLICIES, load_labels
from amlight.data.registry import DatasetMetadata


class PipelineLabelSpace(ModelMixin, ConfigMixin):
    """Class names, colours and decoding settings of a pipeline folder (``label_space/``).

    A ModelMixin only because diffusers saves and loads a pipeline's components through the model,
    scheduler or tokenizer interfaces: the one buffer (the palette, uint8) gives it a weights file, and
    everything that matters is in the config.
    """

    config_name = "config.json"

    def __init__(
        self,
        class_names: Sequence[str] = (),
        colors: Sequence[Sequence[int]] = (),
        ignore_index: int = 255,
        label_format: str = "auto",
        unknown_colors: str = "error",
        ignore_colors: Sequence[Sequence[int]] = (),
        id_map: Sequence[int] | None = None,
        name: str = "",
        prompt: str = "",
    ):
        super().__init__()
        class_names = [str(n) for n in class_names]
        colors = [[int(v) for v in c] for c in colors]
        if label_format not in LABEL_FORMATS:
            raise ValueError(f"label_format must be one of {', '.join(LABEL_FORMATS)}, got {label_format!r}")
        if unknown_colors not in UNKNOWN_COLOR_POLICIES:
            raise ValueError(f"unknown_colors must be one of {', '.join(UNKNOWN_COLOR_POLICIES)}, "
                             f"got {unknown_colors!r}")
        if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
            raise ValueError("colors must be RGB triples of integers in 0..255")
        # DatasetMetadata checks names against colours and the ignore index against the classes.
        self._metadata = DatasetMetadata(name or "pipeline", tuple(class_names), tuple(map(tuple, colors)),
                                         int(ignore_index))
        self.register_to_config(
            class_names=class_names, colors=colors, ignore_index=int(ignore_index), label_format=label_format,
            unknown_colors=unknown_colors, ignore_colors=[[int(v) for v in c] for c in ignore_colors],
            id_map=None if id_map is None else [int(v) for v in id_map], name=str(name), prompt=str(prompt),
        )
        self.register_buffer("palette", torch.tensor(colors, dtype=torch.uint8).reshape(-1, 3))

    @classmethod
    def from_metadata(cls, metadata: DatasetMetadata, prompt: str = "", label_format: str = "auto",
                      unknown_colors: str = "error", ignore_colors=(), id_map=None) -> "PipelineLabelSpace":
        return cls(list(metadata.class_names), [list(c) for c in metadata.colors], metadata.ignore_index,
                   label_format, unknown_colors, [list(c) for c in ignore_colors],
                   None if id_map is None else list(id_map), metadata.name, prompt)

    # The config, read as attributes (ConfigMixin keeps it in ``config``).
    class_names = property(lambda self: list(self.config.class_names))
    colors = property(lambda self: [tuple(c) for c in self.config.colors])
    ignore_index = property(lambda self: int(self.config.ignore_index))
    label_format = property(lambda self: self.config.label_format)
    unknown_colors = property(lambda self: self.config.unknown_colors)
    ignore_colors = property(lambda self: [tuple(c) for c in self.config.ignore_colors])
    id_map = property(lambda self: None if self.config.id_map is None else list(self.config.id_map))
    name = property(lambda self: self.config.name)
    prompt = property(lambda self: self.config.prompt)

    @property
    def num_classes(self) -> int:
        return len(self.config.class_names)

    @property
    def metadata(self) -> DatasetMetadata:
        return self._metadata

    def load_labels(self, path: str | Path) -> np.ndarray:
        """A label file as int64 class indices (H, W), decoded as the training data was."""
        return load_labels(path, self.metadata, self.label_format, self.unknown_colors, self.id_map,
                           ignore_colors=self.ignore_colors)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, classes={self.num_classes}, ignore_index={self.ignore_index}"
