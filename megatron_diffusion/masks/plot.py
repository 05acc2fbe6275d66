"""A readable picture of an attention mask (matplotlib, Agg backend): used by ``show-mask``.

Dark cells may attend. Thin grey lines separate diffusion blocks, dashed orange lines separate
documents, and in block mode a thick black line separates the noisy copy ``x_t`` from the clean
copy ``x0`` (labelled on both axes). Fine grid lines are dropped when there are too many to read.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

import torch  # noqa: E402

from megatron_diffusion import layout  # noqa: E402

_MAX_GRID_LINES = 64  # past this many boundaries per axis the lines hide the cells
_ALLOWED, _MASKED = "#1f4e9c", "#f2f2f2"


def _boundaries(ids_L: torch.Tensor) -> list[int]:
    """Indices ``i > 0`` where ``ids_L[i] != ids_L[i-1]`` (a new block/document starts)."""
    return (torch.nonzero(ids_L[1:] != ids_L[:-1]).flatten() + 1).tolist()


def _title(settings: dict) -> str:
    parts = [f"{settings['mode']} mask", f"L={settings['seq_len']}"]
    if "block_size" in settings:
        parts += [f"block size {settings['block_size']}", f"clean stream {settings['clean_stream']}"]
    parts += [f"visibility {settings['visibility']}",
              "docs " + ",".join(str(n) for n in settings["doc_lengths"])]
    return ", ".join(parts)


def draw_mask(allowed_SS: torch.Tensor, cfg, document_ids_L: torch.Tensor, settings: dict, path: str) -> None:
    S = allowed_SS.shape[0]
    L = document_ids_L.shape[0]
    block = cfg.mode == "block"
    side = min(12.0, max(5.0, 0.32 * S + 2.0))
    fig, ax = plt.subplots(figsize=(side + 1.0, side + 1.6))
    ax.imshow(allowed_SS.numpy().astype(int), cmap=ListedColormap([_MASKED, _ALLOWED]),
              vmin=0, vmax=1, interpolation="nearest")

    copies = (0, L) if block else (0,)
    draw_blocks = False
    if block:
        blocks_L = layout.block_ids(document_ids_L[None], cfg.block_size, cfg.visibility)[0]
        block_lines = [off + i for off in copies for i in _boundaries(blocks_L)]
        draw_blocks = len(block_lines) <= _MAX_GRID_LINES
        if draw_blocks:
            for i in block_lines:
                ax.axhline(i - 0.5, color="#9a9a9a", lw=0.8)
                ax.axvline(i - 0.5, color="#9a9a9a", lw=0.8)
    doc_lines = [off + i for off in copies for i in _boundaries(document_ids_L)]
    if len(doc_lines) <= _MAX_GRID_LINES:
        for i in doc_lines:
            ax.axhline(i - 0.5, color="#e07b00", lw=1.8, ls="--")
            ax.axvline(i - 0.5, color="#e07b00", lw=1.8, ls="--")
    if block:
        ax.axhline(L - 0.5, color="black", lw=2.5)
        ax.axvline(L - 0.5, color="black", lw=2.5)
        # the halves are named on secondary axes so tight_layout keeps them clear of the title
        centres, names = [L / 2 - 0.5, L + L / 2 - 0.5], ["noisy  x_t", "clean  x0"]
        top = ax.secondary_xaxis("top")
        top.set_xticks(centres, labels=names, fontsize=11, weight="bold")
        right = ax.secondary_yaxis("right")
        right.set_yticks(centres, labels=names, fontsize=11, weight="bold", rotation=-90, va="center")
        for secondary in (top, right):
            secondary.tick_params(length=0)

    if S <= 32:
        ax.set_xticks(range(S))
        ax.set_yticks(range(S))
    ax.tick_params(labelsize=8)
    ax.set_xlabel("key token index")
    ax.set_ylabel("query token index")
    ax.set_title(_title(settings), fontsize=11)

    handles = [Patch(color=_ALLOWED, label="may attend"), Patch(facecolor=_MASKED, edgecolor="#bbbbbb", label="masked")]
    if draw_blocks:
        handles.append(Line2D([], [], color="#9a9a9a", lw=0.8, label="block boundary"))
    if block:
        handles.append(Line2D([], [], color="black", lw=2.5, label="noisy | clean"))
    if doc_lines and len(doc_lines) <= _MAX_GRID_LINES:
        handles.append(Line2D([], [], color="#e07b00", lw=1.8, ls="--", label="document boundary"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(handles),
              fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")  # keeps the legend below
    plt.close(fig)
