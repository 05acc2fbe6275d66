"""Training: model setup, the forward/backward step, checkpoints, logging, the trainer loop."""
