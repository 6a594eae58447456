"""Small-scale reproduction of the paper's distillation mechanism on bundled public-domain photos."""
