"""What a compression setting means, without torch (the config validates with it)."""

from __future__ import annotations


def parse_sparsity(sparsity: float | str) -> tuple[float, int, int]:
    """0.5 -> (0.5, 0, 0); "2:4" -> (0.5, 2, 4): (fraction of zeros, n, m), n zeros in every m weights along
    the input dimension (so 1:4 is 25%, as in Table 5). A ValueError says what is wrong."""
    if isinstance(sparsity, str):
        n, sep, m = sparsity.partition(":")
        if not (sep and n.strip().isdigit() and m.strip().isdigit()):
            raise ValueError(f"sparsity {sparsity!r} must be a fraction like 0.5 or a pattern n:m like 2:4")
        n_, m_ = int(n), int(m)
        if not 0 < n_ < m_:
            raise ValueError(f"sparsity {sparsity!r}: n:m needs 0 < n < m (n zeros in every m weights)")
        return n_ / m_, n_, m_
    if isinstance(sparsity, bool) or not 0 < float(sparsity) < 1:
        raise ValueError(f"sparsity {sparsity} must be a fraction of zeros in (0, 1), or n:m like 2:4")
    return float(sparsity), 0, 0


def check_width(sparsity: float | str, columns: int) -> None:
    """An n:m pattern needs m to divide the layer's input width."""
    _, _, m = parse_sparsity(sparsity)
    if m and columns % m:
        raise ValueError(f"sparsity {sparsity!r} needs the input width to be a multiple of {m}; it is {columns}")


def check_pattern(sparsity: float | str, linears: str, dims: dict[str, int]) -> None:
    """An n:m pattern must divide the input width of every linear module it prunes: the model width for the
    first linears (QKV, gate + up), the attention's heads x head dim and the MLP's hidden size for the second.
    `dims` as `modeling_unast.teacher_dims` gives them."""
    widths = {"first": [dims["hidden_size"]], "second": [dims["heads"] * dims["head_dim"], dims["hidden"]]}
    for width in widths["first"] * (linears != "second") + widths["second"] * (linears != "first"):
        check_width(sparsity, width)
