"""spattn: sparse transformer-attention accelerator generator."""
