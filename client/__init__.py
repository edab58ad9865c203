"""Flower ClientApp: a hospital site running ctan.engine on its own data."""
