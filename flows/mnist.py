"""MNIST flow: IDX files (or scikit-learn's digits) → store → β-VAE → encode → Î → Table 2 → report."""

from flows.images import image_flow

mnist = image_flow(
    "mnist",
    """MNIST through the stages of the paper: store → β-VAE → encode → Î → Table 2 → report.

    Without ``data_dir`` it runs on the 1797 handwritten digits bundled with scikit-learn, laid
    out like MNIST. ``resume`` continues β-VAE training from its last checkpoint; stored
    images and latents of the same model are never recomputed.
    """,
)
