"""The diffusion LM: megatron-core ``GPTModel`` + layer specs + diffusion-mask core attention."""
