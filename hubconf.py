"""torch.hub entry points: one per block and depth, e.g.

    model = torch.hub.load("OWNER/csa-lightning", "csa_resnet50", num_classes=10)            # a new network
    model = torch.hub.load("OWNER/csa-lightning", "csa_resnet50", weights="path/to/folder")  # trained weights

``torch.hub.list("OWNER/csa-lightning")`` lists them (csa_lightning.models.names makes them).
"""

from csa_lightning.models.names import hub_entrypoints as _hub_entrypoints

# what torch.hub checks before it imports this file
dependencies = ["torch", "torchvision", "safetensors"]

globals().update(_hub_entrypoints())
