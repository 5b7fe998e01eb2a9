"""The networks of the method: first-stage autoencoder, latent units and tokens, and the
diffusion U-Net with Skip Dropout; ``layers`` holds the blocks they share."""
