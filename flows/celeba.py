"""CelebA flow: aligned JPEGs (or procedural images) → store → β-VAE → encode → Î → Table 2 → report."""

from flows.images import image_flow

celeba = image_flow(
    "celeba",
    """CelebA through the stages of the paper: store → β-VAE → encode → Î → Table 2 → report.

    Without ``data_dir`` it runs on procedural 64x64 images with k = 4 known independent
    factors, and the report compares k with the number of factors Î finds influential. An
    image that cannot be decoded is named in the log and the report and left out; the rest
    are used.
    """,
)
