"""The application layer: the Hydra entry points. The only code that reads configs."""
