"""The action network p_θ2: a causal GPT-2 over [t, prompt, foresight h, noisy actions] (algorithm.md §4.2).

Design (VPDD's released ``MetaFinetuneModel_v1``, with transformers' ``GPT2Model`` as the backbone):

* **Action tokens** (``action_embedding``). Each noisy action token (bin value v in [0, K_a), [MASK] = K_a)
  is embedded as

  - ``"ordinal"`` (the released code): the scalar ``v / K_a`` -> ``Linear(1, d) -> Mish -> Linear(d, d) ->
    Mish -> Linear(d, d)`` (the released code feeds the raw value 0..48; the scale to [0, 1] is ours).
    [MASK] (1.0) then sits next to the top bin (47/48 = 0.98), which is where a saturated +1 motion lands:
    on the tiny pipeline's demonstrations 14 % of all action tokens are bin 47, so a masked token and a
    full-speed move look almost alike to the network;
  - ``"ordinal_mask"``: the same scalar MLP for the bins, and a learned vector of its own for [MASK],
    initialised to the MLP's output for 1.0: the network starts as the ``"ordinal"`` one, and training can
    move [MASK] away from the top bin without moving the bins;
  - ``"table"``: ``nn.Embedding(K_a + 1, d)``, one free vector per bin and for [MASK] (no ordinal prior).
* **Foresight.** ``h``, the video network's decoder features at the noisy-future positions (B, N_v, d_v),
  enters detached; a ``Linear(d_v, d)`` adapts it when the two widths differ (identity otherwise, the
  paper's 256/256).
* **Sequence.** ``[t, prompt, h (N_v), actions (N_a)]`` with the same multiplicative conditioning as the
  video network (``S <- prompt * S; S <- t * S + pos; LN``), ``pos`` learned and zero-initialised.
* **Backbone.** ``GPT2Model`` called with ``inputs_embeds`` (causal self-attention, ``n_layer`` blocks,
  ``n_head`` heads, ``n_inner`` MLP width, Mish, dropout on residuals/attention/embeddings). Its own
  learned position table ``wpe`` is zeroed and frozen: the released backbone has none, and ``pos`` above
  plays that role. The token table ``wte`` is unused (vocab size 1).
* **Heads.** The last N_a outputs are viewed as (B, chunk, D, d); dimension j of every step goes through
  its own head ``Linear(d, d) -> Mish -> Linear(d, K_a)`` (x, y, z and the gripper on Meta-World).
"""

from __future__ import annotations

import torch
from torch import nn

from vpdd.config.model import ACTION_EMBEDDINGS
from vpdd.models.layers import condition, prompt_mlp, time_mlp


def gpt2_backbone(seq_len: int, d: int, n_layer: int, n_head: int, n_inner: int, dropout: float) -> nn.Module:
    """transformers' ``GPT2Model`` fed with ``inputs_embeds``: Mish MLPs, its ``wpe`` zeroed and frozen, ``wte``
    unused (vocabulary of one) and frozen."""
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(
        vocab_size=1,
        n_positions=seq_len,
        n_embd=d,
        n_layer=n_layer,
        n_head=n_head,
        n_inner=n_inner,
        activation_function="mish",
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        use_cache=False,
    )
    gpt = GPT2Model(config)
    with torch.no_grad():
        gpt.wpe.weight.zero_()
    gpt.wpe.weight.requires_grad_(False)
    gpt.wte.weight.requires_grad_(False)
    return gpt


def mlp3(d_in: int, d: int) -> nn.Sequential:
    """``Linear(d_in, d) -> Mish -> Linear(d, d) -> Mish -> Linear(d, d)`` (the released token embeddings)."""
    return nn.Sequential(nn.Linear(d_in, d), nn.Mish(), nn.Linear(d, d), nn.Mish(), nn.Linear(d, d))


def head(d: int, n_bins: int) -> nn.Sequential:
    """``Linear(d, d) -> Mish -> Linear(d, n_bins)``: an action dimension's logits."""
    return nn.Sequential(nn.Linear(d, d), nn.Mish(), nn.Linear(d, n_bins))


class GPT2ActionTrunk(nn.Module):
    """What the action networks share: the conditioning (``prompt_embed``, ``time_embed``, ``pos_emb``,
    ``in_norm``) and the GPT-2 (``gpt``) over ``[t, prompt, features, actions]``; the subclass builds its
    embeddings first, then calls :meth:`_build_trunk`, then its heads (the order fixes the initialisation)."""

    n_action_tokens: int

    def _build_trunk(self, lang_dim: int, d: int, seq_len: int, n_layer: int, n_head: int, n_inner: int,
                     dropout: float) -> None:
        self.prompt_embed = prompt_mlp(lang_dim, d)
        self.time_embed = time_mlp(d)
        self.pos_emb = nn.Parameter(torch.zeros(1, seq_len, d))
        self.in_norm = nn.LayerNorm(d)
        self.gpt = gpt2_backbone(seq_len, d, n_layer, n_head, n_inner, dropout)

    def _trunk(self, t: torch.Tensor, lang: torch.Tensor, feats: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        """The GPT-2 outputs at the action positions, (B, chunk, action_dim, d)."""
        prompt = self.prompt_embed(lang)
        temb = self.time_embed(t)
        seq = torch.cat([temb[:, None], prompt[:, None], feats.to(acts.dtype), acts], dim=1)
        seq = condition(seq, prompt, temb, self.pos_emb, self.in_norm)
        out = self.gpt(inputs_embeds=seq).last_hidden_state[:, -self.n_action_tokens :]
        return out.reshape(acts.shape[0], self.chunk, self.action_dim, -1)


class ActionNet(GPT2ActionTrunk):
    def __init__(
        self,
        n_bins: int,
        chunk: int,
        action_dim: int,
        n_video_tokens: int,
        video_dim: int,
        lang_dim: int,
        n_layer: int = 6,
        n_head: int = 2,
        n_embd: int = 256,
        n_inner: int = 1024,
        dropout: float = 0.1,
        history_input: bool = False,
        code_dim: int | None = None,
        action_embedding: str = "ordinal",
    ):
        super().__init__()
        if action_embedding not in ACTION_EMBEDDINGS:
            raise ValueError(f"ActionNet(action_embedding={action_embedding!r}): expected one of "
                             f"{list(ACTION_EMBEDDINGS)}")
        self.action_embedding = action_embedding
        self.n_bins, self.chunk, self.action_dim = n_bins, chunk, action_dim
        # history_input: the current observation's codebook embeddings join the foresight features
        self.needs_history = bool(history_input)
        if self.needs_history and not code_dim:
            raise ValueError("ActionNet(history_input=True) needs code_dim (the codebook width)")
        self.embed_history = nn.Linear(code_dim, n_embd) if self.needs_history else None
        self.n_action_tokens = chunk * action_dim
        self.n_video_tokens = n_video_tokens
        seq_len = 2 + n_video_tokens + self.n_action_tokens
        d = n_embd
        self.embed_action = nn.Embedding(n_bins + 1, d) if action_embedding == "table" else mlp3(1, d)
        self.embed_foresight = nn.Identity() if video_dim == d else nn.Linear(video_dim, d)
        self._build_trunk(lang_dim, d, seq_len, n_layer, n_head, n_inner, dropout)
        self.heads = nn.ModuleList(head(d, n_bins) for _ in range(action_dim))
        self.mask_embed = None
        if action_embedding == "ordinal_mask":
            # created last, from the scalar MLP's own [MASK] vector: no random draws, so the network starts
            # exactly as "ordinal" does, and only training moves [MASK] away from the top bin
            with torch.no_grad():
                self.mask_embed = nn.Parameter(self.embed_action(torch.ones(1, 1))[0].clone())

    def embed_action_tokens(self, x_action: torch.Tensor) -> torch.Tensor:
        """(B, N_a) local action tokens -> (B, N_a, d) embeddings (``action_embedding``)."""
        if self.action_embedding == "table":
            return self.embed_action(x_action)
        acts = self.embed_action((x_action.float() / self.n_bins).unsqueeze(-1))
        if self.mask_embed is not None:
            acts = torch.where((x_action == self.n_bins).unsqueeze(-1), self.mask_embed.to(acts.dtype), acts)
        return acts

    def forward(
        self, x_action: torch.Tensor, t: torch.Tensor, lang: torch.Tensor, h: torch.Tensor,
        history: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_action (B, N_a) local action tokens (bins [0, K_a), [MASK] = K_a), t (B,), lang (B, L),
        h (B, N_v, d_v), history (B, N_v, D_code) codebook embeddings (with ``history_input``) -> action
        logits (B, N_a, K_a)."""
        b = x_action.shape[0]
        if x_action.shape[1] != self.n_action_tokens or h.shape[1] != self.n_video_tokens:
            raise ValueError(
                f"ActionNet: expected {self.n_action_tokens} action tokens and {self.n_video_tokens} foresight "
                f"features, got {x_action.shape[1]} and {h.shape[1]}"
            )
        acts = self.embed_action_tokens(x_action)
        fore = self.embed_foresight(h.detach())
        if self.embed_history is not None:
            if history is None or history.shape[:2] != h.shape[:2]:
                raise ValueError(f"ActionNet(history_input=True): expected history embeddings (B, {h.shape[1]}, "
                                 f"D), got {None if history is None else tuple(history.shape)}")
            fore = fore + self.embed_history(history.to(fore.dtype))
        out = self._trunk(t, lang, fore, acts)
        logits = torch.stack([head(out[:, :, j]) for j, head in enumerate(self.heads)], dim=2)
        return logits.reshape(b, self.n_action_tokens, self.n_bins)
