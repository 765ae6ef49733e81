from modeling.torchvision_compat import declare_torchvision_ops

declare_torchvision_ops()  # before anything imports transformers (see modeling/torchvision_compat.py)
