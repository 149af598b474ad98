"""Small utilities with no place in the method: atomic file writes, CPU thread counts, CUDA runtime
facts and image grids. Kept free of heavy imports: ``cpu_threads`` runs before torch is imported."""
