"""The fixed orders of the paper's Table 5 (sampling-order ablation on MAR-H).

The paper names them only: "Raster (top-left to bottom-right), Subsample (4-quadrant raster),
Random (permutation), and GtR", and says Subsample "outperforms Raster by establishing global
structure through quadrant distribution but still suffers from adjacent token prediction within
quadrants" (paper section 4.4). No code was released. Random is gtr.method.RandomOrder, GtR is
gtr.gtr.StagedOrder. configs/method/raster.yaml and subsample.yaml keep GtR's counts and diffusion steps,
so that only the order changes.
"""
import torch



class RasterOrder:
    """Row by row from the top-left cell to the bottom-right one (the same for every image)."""

    def __call__(self, grid, generator):
        return torch.arange(grid[0] * grid[1])


def quadrants(h, w):
    """The grid's four quadrants (top-left, top-right, bottom-left, bottom-right), each a list of
    raster positions in raster order within the quadrant. Odd sizes: the top / left halves take
    the extra row / column; on a 1-wide grid two quadrants are empty."""
    top, left = (h + 1) // 2, (w + 1) // 2
    blocks = [(range(0, top), range(0, left)), (range(0, top), range(left, w)),
              (range(top, h), range(0, left)), (range(top, h), range(left, w))]
    return [[i * w + j for i in rows for j in cols] for rows, cols in blocks]


class SubsampleOrder:
    """"4-quadrant raster": the four quadrants are scanned in raster order at the same time.

    Our reading of the paper's two phrases: entry 4t + q of the order is the t-th cell (raster order
    inside the quadrant) of quadrant q = top-left, top-right, bottom-left, bottom-right; quadrants
    that run out (odd grids) are skipped. So every AR step spreads its tokens evenly over the four
    quadrants ("global structure through quadrant distribution"), while inside each quadrant they
    are a run of neighbouring raster cells ("adjacent token prediction within quadrants").
    Rejected reading: the four (i % 2, j % 2) sub-lattices one after the other — there a step's
    tokens are never side by side, which contradicts the paper's explanation of Subsample's weakness.
    """

    def __call__(self, grid, generator):
        parts = quadrants(grid[0], grid[1])
        longest = max(len(p) for p in parts)
        return torch.tensor([p[t] for t in range(longest) for p in parts if t < len(p)])
