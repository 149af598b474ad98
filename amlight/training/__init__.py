"""Training plumbing around Lightning: the run folder (paths, refuse/resume, failed-start cleanup), config
saving, the TensorBoard logger and atomic checkpoint I/O. The method's training steps are in ``stages/``."""
