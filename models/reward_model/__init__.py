"""The session reward model (OneRec, arXiv 2502.18965 §2.4): R(user, session) from per-objective heads.

Pure torch/numpy, no I/O. ``model`` holds the network and its config, ``features`` turns histories into
tensors, ``data`` the training examples and per-session targets, ``training`` the loop, ``metrics`` AUC /
calibration / rank correlation, ``checkpoint`` safetensors + JSON bytes, ``scorer`` what the aligner calls.
"""
