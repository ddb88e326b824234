"""Generated from protos/deeprec/v1 by scripts/gen_protos.py. Do not edit."""
