"""The PyTorch source: ``state_dict`` files (``.pt``/``.pth``, :func:`.pt.read`) and
safetensors files (:func:`.safetensors.read`), read into a plan by their names
(:mod:`.statedict`)."""
