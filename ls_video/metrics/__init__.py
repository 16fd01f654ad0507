"""Video metrics. ``toy``: motion / colour / shape accuracy on the toy world from pixels only; ``clipsim``,
``features`` + ``frechet``: CLIPSIM and FVD / FID with transformers extractors; ``i3d``, ``inception``,
``protocols``: the published networks (StyleGAN-V's I3D and C3D, clean-fid's Inception, CLIP-FID) and the
UCF-101 / MSR-VTT zero-shot protocols (``ls-video benchmark``)."""
