"""Training: `pretrain` (a base StyleGAN2 from scratch) and `continual` (per-task adapters on a
frozen base, CoLoR-GAN recipe, and the LFS-GAN / EWC / Lifelong-GAN baselines)."""
