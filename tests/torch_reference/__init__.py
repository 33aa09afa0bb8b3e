"""PyTorch reference modules for the parity tests, written from the authors' released code.

Each module names the repository and file it follows. Their attribute names are the
authors', so their ``state_dict`` keys are those of the released checkpoints and go
through ``rattn.convert`` unchanged.
"""
