"""torch.hub entry point: ``torch.hub.load("<path of this checkout>", "fadenet", source="local")``."""
dependencies = ["torch", "torchvision", "yaml"]


def fadenet(device: str = "cpu"):
    """FADE-Net with the weights shipped in ``fadenet/pretrained/`` (see its MODEL_CARD.md), in
    eval mode."""
    import fadenet as package
    return package.pretrained(device)
