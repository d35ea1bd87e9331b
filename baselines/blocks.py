"""A transformer block's internals, run by caches that need its keys and values (baselines/lazymar.py,
baselines/recap.py): each computes what the model's own Attention computes, in pieces."""
import torch
import torch.nn.functional as F


def qkv(block, h):
    """q, k, v (B, heads, n, head_dim) of a block's attention, computed as the model's Attention does."""
    b, n, d = h.shape
    heads = block.attn.num_heads
    q, k, v = block.attn.qkv(h).view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    return q, k, v


def attend(block, q, k, v):
    """Attention of queries q over keys/values k, v, then the block's output projection."""
    b, heads, n, hd = q.shape
    x = F.scaled_dot_product_attention(q, k, v)
    return block.attn.proj(x.transpose(1, 2).reshape(b, n, heads * hd))


def heads_index(index, like):
    """index (B, n) expanded to gather/scatter the sequence dim of like (B, H, N, hd)."""
    return index[:, None, :, None].expand(-1, like.shape[1], -1, like.shape[3])


def seq_index(model, positions):
    """Sequence rows (buffer slots first) of token positions (B, n), with the buffer: (B, buffer + n)."""
    b = positions.shape[0]
    buffer = torch.arange(model.buffer_size, device=positions.device).expand(b, -1)
    return torch.cat([buffer, positions + model.buffer_size], dim=1)
