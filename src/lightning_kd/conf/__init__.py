"""Hydra configs of kd-train (a package so that Hydra finds them inside the installed wheel)."""
