"""The offline demo benchmark: a synthetic captioned-image world, its tasks, and a tiny pretrained CLIP."""
