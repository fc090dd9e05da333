"""A seeded synthetic world: users with drifting latent tastes, topical items, a closed loop.

Why a world and not just a log: the closed-loop simulator (docs/architecture.md §6) needs
users who *answer* served sessions the way they would, so the world keeps each
user's true preference over latent topics and exposes :meth:`SyntheticWorld.respond`.

Generative story (all numpy, vectorised; the default world of ~2k users, ~3k
items and ~150k events is built in a few seconds):

* ``n_topics`` latent topics, each with a vocabulary of real English words
  (cooking, football, jazz, …) so a sentence encoder sees the structure in the
  item text. Topics have Zipf-like popularity.
* Items: a primary topic plus a small Dirichlet mixture (``item_topics``); the
  title, text, tags and creator are generated from the item's topics. Item
  popularity is Zipf (exponent ``zipf_a``, random rank order). A fraction of the
  catalog exists at the start; the rest arrives uniformly over the stream
  (new ``item-events`` upserts later in time).
* Users: a Dirichlet taste ``p0`` that drifts linearly towards a second taste
  ``p1`` over the stream (``drift`` is how far it gets), and a log-normal
  activity level. Sessions happen at random times; each slot of a session
  shows one item, picked by Gumbel-max over popularity-sampled candidates
  with utility ``beta · affinity`` among the items that exist at that time.
* Reaction to a shown item in the log follows the relative affinity ``r`` ∈ [0, 1]:
  impression, then click → watch (``watch_ms`` ∝ r · the item's length) →
  like / share / comment / follow / purchase with probabilities growing with
  r, or a skip. Repeating a topic inside a session tires the user (fatigue),
  which gives session-level generation something to learn.

Served sessions are answered by the user response model of
:mod:`ingest.user_response` instead (RecSim / KuaiSim style: cascade
attention by position, a logit choice between click, pass and dislike with a
no-click option, fatigue for same-topic items, leaving when bored, watch
fraction by match; parameters :class:`ingest.user_response.ResponseConfig`,
calibrated in docs/decisions/030-simulator-user-model.md): :meth:`SyntheticWorld.respond`
builds one session's event records, seeded by the request id so replies are
reproducible; :meth:`SyntheticWorld.respond_arrays` answers many sessions as
arrays; :meth:`SyntheticWorld.expected_value` is a session's true value (the
expected product reward). The log keeps its own reaction model, so the data
every model trains on does not change with the simulator's calibration.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np

from ingest.contract import ItemEvent, UserEvent
from ingest.datasets import Dataset, merge_by_time
from ingest.user_response import (EXTRA_TYPES, ResponseConfig, Responses, draw_uniforms, respond_arrays,
                                  session_rewards)

# ---- topic vocabularies ----------------------------------------------------------------------

_TOPICS: list[tuple[str, list[str]]] = [
    ("cooking", ["recipe", "pasta", "kitchen", "baking", "chef", "garlic", "sourdough", "soup", "spices", "dessert", "grill", "noodles", "salad", "oven"]),
    ("football", ["goal", "striker", "league", "penalty", "derby", "midfield", "keeper", "transfer", "stadium", "tactics", "dribble", "referee", "season", "cup"]),
    ("jazz", ["saxophone", "swing", "bebop", "trumpet", "improvisation", "quartet", "blues", "piano", "standards", "groove", "club", "ballad", "rhythm", "solo"]),
    ("space", ["rocket", "galaxy", "orbit", "astronaut", "telescope", "mars", "nebula", "launch", "satellite", "planet", "comet", "cosmos", "lunar", "starship"]),
    ("gaming", ["speedrun", "boss", "console", "multiplayer", "quest", "level", "controller", "esports", "pixel", "raid", "loot", "arcade", "strategy", "shooter"]),
    ("fitness", ["workout", "squat", "cardio", "protein", "stretching", "marathon", "yoga", "dumbbell", "sprint", "endurance", "core", "mobility", "gym", "recovery"]),
    ("travel", ["backpacking", "island", "passport", "hostel", "mountains", "beach", "itinerary", "flight", "road", "trip", "village", "museum", "hiking", "ferry"]),
    ("finance", ["stocks", "budget", "investing", "savings", "dividend", "inflation", "crypto", "mortgage", "portfolio", "market", "taxes", "retirement", "index", "bonds"]),
    ("gardening", ["tomatoes", "compost", "seeds", "pruning", "roses", "soil", "greenhouse", "herbs", "orchard", "mulch", "seedlings", "flowers", "watering", "harvest"]),
    ("cars", ["engine", "horsepower", "drift", "turbo", "electric", "restoration", "racing", "garage", "sedan", "torque", "exhaust", "rally", "supercar", "tires"]),
    ("science", ["experiment", "chemistry", "molecule", "physics", "laboratory", "microscope", "quantum", "genetics", "reaction", "atoms", "evolution", "research", "energy", "cells"]),
    ("comedy", ["standup", "sketch", "prank", "parody", "jokes", "sitcom", "improv", "satire", "bloopers", "roast", "punchline", "laughs", "funny", "spoof"]),
    ("fashion", ["outfit", "runway", "sneakers", "vintage", "streetwear", "designer", "denim", "tailoring", "accessories", "makeup", "styling", "jacket", "collection", "thrift"]),
    ("pets", ["puppy", "kitten", "training", "aquarium", "parrot", "grooming", "rescue", "hamster", "leash", "veterinarian", "tricks", "adoption", "cute", "paws"]),
    ("history", ["empire", "medieval", "battle", "pharaoh", "castle", "revolution", "archaeology", "dynasty", "ancient", "war", "kings", "ruins", "manuscript", "legion"]),
    ("tech", ["smartphone", "laptop", "programming", "robot", "gadget", "software", "chip", "startup", "cloud", "keyboard", "review", "coding", "algorithm", "hardware"]),
]
_QUALIFIERS = ["indie", "classic", "extreme", "family", "budget", "pro", "retro", "urban", "minimal", "wild",
               "late night", "beginner", "epic", "cozy", "weekly", "global"]
_ADJ = ["ultimate", "quick", "honest", "surprising", "complete", "tiny", "legendary", "simple", "deep", "weekend",
        "hidden", "best", "crazy", "calm", "first", "real"]
_FORMS = ["guide", "story", "challenge", "review", "tips", "session", "highlights", "tutorial", "vlog", "explained",
          "moments", "diary", "countdown", "breakdown", "live", "journey"]
_TEXT = [
    "A {adj} {form} about {w1} and {w2}, for anyone into {topic}.",
    "We try {w1}, {w2} and a little {w3} in this {adj} {topic} {form}.",
    "Everything you wanted to know about {w1}: {w2}, {w3} and more {topic}.",
    "{Adj} {topic} {form}: {w1} meets {w2}, with a twist of {w3}.",
]

#: Event types the world emits (``dislike`` only in answers to served sessions, not in the log).
WORLD_EVENT_TYPES = ("impression", "click", "watch", "like", "share", "comment", "follow", "purchase", "skip",
                     "dislike")


def topic_names(n_topics: int) -> list[str]:
    """Names of ``n_topics`` topics (base topics, then qualified variants such as 'retro cooking')."""
    out = []
    for k in range(n_topics):
        base, q = _TOPICS[k % len(_TOPICS)][0], k // len(_TOPICS)
        out.append(base if q == 0 else f"{_QUALIFIERS[(q - 1) % len(_QUALIFIERS)]} {base}")
    return out


def topic_vocab(k: int) -> list[str]:
    """Words of topic ``k`` (variants add their qualifier to the base vocabulary)."""
    base = list(_TOPICS[k % len(_TOPICS)][1])
    q = k // len(_TOPICS)
    if q:
        base.append(_QUALIFIERS[(q - 1) % len(_QUALIFIERS)])
    return base


#: Points of the table of each user's best affinity over the taste mix (SyntheticWorld._match).
_GRID = 33


# ---- config ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorldConfig:
    """Size and behaviour of a synthetic world; the same config and seed give the same world."""

    seed: int = 0
    n_users: int = 2000
    n_items: int = 3000
    n_topics: int = 16
    sessions_per_user: float = 6.0      # mean sessions per user over the stream
    session_len: float = 6.0            # mean slots (items shown) per session
    days: float = 30.0                  # span of the stream
    start_ts_ms: int = 1_767_225_600_000  # 2026-01-01T00:00Z
    initial_item_fraction: float = 0.6  # share of the catalog that exists at the start
    zipf_a: float = 1.05                # item popularity exponent
    user_topic_alpha: float = 0.3       # Dirichlet concentration of tastes (small = focused)
    drift: float = 0.5                  # how far tastes move towards their second taste by the end
    beta: float = 6.0                   # weight of taste vs popularity when choosing what to show
    candidates: int = 32                # popularity-sampled candidates per slot
    fatigue: float = 0.8                # engagement factor per earlier same-topic item in a session
    emit_impressions: bool = True       # impression events (the exposures) in the stream

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_topics", "candidates"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"WorldConfig.{name}={v!r} must be a positive int")
        for name in ("sessions_per_user", "session_len", "days", "zipf_a", "user_topic_alpha", "beta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"WorldConfig.{name}={getattr(self, name)!r} must be > 0")
        for name in ("initial_item_fraction", "drift", "fatigue"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"WorldConfig.{name}={v!r} must be in [0, 1]")
        if self.initial_item_fraction * self.n_items < 1:
            raise ValueError(f"WorldConfig.initial_item_fraction={self.initial_item_fraction} leaves no item at "
                             f"the start with n_items={self.n_items}; raise one of them")
        if self.start_ts_ms < 0:
            raise ValueError(f"WorldConfig.start_ts_ms={self.start_ts_ms} must be >= 0")

    @property
    def duration_ms(self) -> int:
        return int(self.days * 86_400_000)

    @classmethod
    def small(cls, seed: int = 0, **kw) -> "WorldConfig":
        """A small world (~500 users, ~800 items, ~25k events) for quick demos and tests."""
        return cls(**{"seed": seed, "n_users": 500, "n_items": 800, "n_topics": 12, "sessions_per_user": 5.0,
                      "days": 14.0, **kw})


# ---- the world -------------------------------------------------------------------------------

class SyntheticWorld:
    """Users, items and their interactions, generated from :class:`WorldConfig` (see module doc)."""

    def __init__(self, cfg: WorldConfig = WorldConfig(), response: ResponseConfig | Mapping | None = None):
        self.cfg = cfg
        #: How users answer served sessions (:meth:`respond`, :meth:`expected_value`); the log does not use it.
        self.response = ResponseConfig.of(response)
        rng = np.random.default_rng(cfg.seed)
        U, I, T = cfg.n_users, cfg.n_items, cfg.n_topics
        self.topic_names = topic_names(T)
        # Topics: Zipf-ish popularity, shuffled.
        tpop = 1.0 / np.arange(1, T + 1) ** 0.7
        self.topic_popularity = rng.permutation(tpop / tpop.sum())  # [T]
        # Items: primary topic + sparse mixture.
        self.item_primary = rng.choice(T, size=I, p=self.topic_popularity)  # [I]
        mix = rng.dirichlet(np.full(T, 0.2), size=I)  # [I, T]
        onehot = np.eye(T)[self.item_primary]
        self._item_topics = (0.75 * onehot + 0.25 * mix).astype(np.float32)  # [I, T], rows sum to 1
        ranks = rng.permutation(I) + 1
        pop = 1.0 / ranks ** cfg.zipf_a
        self.item_popularity = pop / pop.sum()  # [I]
        n0 = max(1, int(round(cfg.initial_item_fraction * I)))
        arrival = np.zeros(I, dtype=np.int64)
        late = rng.permutation(I)[: I - n0]
        arrival[late] = rng.integers(1, cfg.duration_ms, size=late.size)
        self.item_arrival_ms = cfg.start_ts_ms + arrival  # [I]
        self.item_length_ms = np.clip(rng.lognormal(np.log(90_000), 0.6, size=I), 10_000, 1_800_000).astype(np.int64)
        self.item_ids = [f"i{k}" for k in range(I)]
        self._item_index = {s: k for k, s in enumerate(self.item_ids)}
        # Users: two tastes (drift from p0 towards p1) and an activity level.
        self._p0 = rng.dirichlet(np.full(T, cfg.user_topic_alpha), size=U).astype(np.float32)  # [U, T]
        self._p1 = rng.dirichlet(np.full(T, cfg.user_topic_alpha), size=U).astype(np.float32)  # [U, T]
        self.user_activity = rng.lognormal(0.0, 0.7, size=U)  # [U]
        self.user_ids = [f"u{k}" for k in range(U)]
        self._user_index = {s: k for k, s in enumerate(self.user_ids)}
        # Affinity tables: a(u, i, t) = (1 - w(t)) A0[u, i] + w(t) A1[u, i] (exact: tastes mix linearly).
        self._A0 = self._p0 @ self._item_topics.T  # [U, I]
        self._A1 = self._p1 @ self._item_topics.T  # [U, I]
        self._amax0 = self._A0.max(axis=1)  # [U]
        self._amax1 = self._A1.max(axis=1)  # [U]
        self._catalog = self._make_catalog(np.random.default_rng([cfg.seed, 1]))
        self._user_events: list[UserEvent] | None = None
        #: An item's appeal to everybody, its popularity percentile in [0, 1] (the user response model's quality).
        self.item_quality = (np.argsort(np.argsort(self.item_popularity, kind="stable"), kind="stable")
                             / max(1, I - 1))  # [I]
        self._best_grid: np.ndarray | None = None  # [U, _GRID] best affinity by taste mix (lazy, see _match)

    def describe(self) -> str:
        """One line: sizes of the world and its log."""
        c = self.cfg
        return (f"{c.n_users} users, {c.n_items} items ({len(self.initial_catalog())} at the start), "
                f"{c.n_topics} topics, {len(self.user_events)} user events over {c.days:g} days, seed {c.seed}")

    # -- catalog ---------------------------------------------------------------------------

    def _make_catalog(self, rng: np.random.Generator) -> list[ItemEvent]:
        cfg = self.cfg
        creators_per_topic = max(2, cfg.n_items // (cfg.n_topics * 12))
        vocabs = [topic_vocab(k) for k in range(cfg.n_topics)]
        out = []
        for k in range(cfg.n_items):
            t = int(self.item_primary[k])
            mix = self._item_topics[k].copy()
            mix[t] = 0
            t2 = int(mix.argmax())
            v, v2 = vocabs[t], vocabs[t2]
            w = rng.choice(len(v), size=3, replace=False)
            adj, form = _ADJ[rng.integers(len(_ADJ))], _FORMS[rng.integers(len(_FORMS))]
            w1, w2, w3 = v[w[0]], v[w[1]], v2[rng.integers(len(v2))]
            title = f"{adj.capitalize()} {w1} {form}" if rng.random() < 0.5 else f"{w1.capitalize()} and {w2}: the {adj} {form}"
            tmpl = _TEXT[rng.integers(len(_TEXT))]
            text = tmpl.format(adj=adj, Adj=adj.capitalize(), form=form, w1=w1, w2=w2, w3=w3,
                               topic=self.topic_names[t])
            tags = [self.topic_names[t], w1, w2]
            if self._item_topics[k, t2] > 0.1:
                tags.append(self.topic_names[t2])
            out.append(ItemEvent(item_id=self.item_ids[k], ts=int(self.item_arrival_ms[k]), op="upsert",
                                 title=title, text=text, tags=list(dict.fromkeys(tags)),
                                 creator=f"c{t}_{rng.integers(creators_per_topic)}"))
        out.sort(key=lambda e: e.ts)
        return out

    @property
    def catalog(self) -> list[ItemEvent]:
        """Every item's upsert, in arrival order (the first ``initial_item_fraction`` at the start)."""
        return list(self._catalog)

    def initial_catalog(self) -> list[ItemEvent]:
        """Items that exist when the stream starts."""
        return [e for e in self._catalog if e.ts <= self.cfg.start_ts_ms]

    # -- ground truth ----------------------------------------------------------------------

    def _w(self, ts: int | np.ndarray | None) -> np.ndarray | float:
        if ts is None:
            return self.cfg.drift
        frac = (np.asarray(ts, dtype=np.float64) - self.cfg.start_ts_ms) / self.cfg.duration_ms
        return self.cfg.drift * np.clip(frac, 0.0, 1.0)

    def user_index(self, user_id: str) -> int:
        try:
            return self._user_index[user_id]
        except KeyError:
            raise KeyError(f"unknown user {user_id!r}; this world has users u0..u{self.cfg.n_users - 1}") from None

    def item_index(self, item_id: str) -> int:
        try:
            return self._item_index[item_id]
        except KeyError:
            raise KeyError(f"unknown item {item_id!r}; this world has items i0..i{self.cfg.n_items - 1}") from None

    def preference(self, user_id: str, ts: int | None = None) -> np.ndarray:
        """The user's true taste over topics at ``ts`` (default: the end of the stream). [n_topics], sums to 1."""
        u, w = self.user_index(user_id), float(self._w(ts))
        return ((1 - w) * self._p0[u] + w * self._p1[u]).astype(np.float32)

    def item_topics(self, item_id: str) -> np.ndarray:
        """The item's topic mixture. [n_topics], sums to 1."""
        return self._item_topics[self.item_index(item_id)].copy()

    def affinity(self, user_id: str, item_ids: list[str], ts: int | None = None) -> np.ndarray:
        """Relative affinity r ∈ [0, 1] of the user for each item at ``ts`` (1 = the user's best item). [K]"""
        u = self.user_index(user_id)
        idx = np.array([self.item_index(i) for i in item_ids], dtype=np.int64)
        return self._rel_affinity(np.full(idx.size, u), idx, np.full(idx.size, float(self._w(ts))))

    def _rel_affinity(self, u: np.ndarray, i: np.ndarray, w: np.ndarray) -> np.ndarray:
        a = (1 - w) * self._A0[u, i] + w * self._A1[u, i]
        amax = (1 - w) * self._amax0[u] + w * self._amax1[u]
        return np.clip(a / np.maximum(amax, 1e-9), 0.0, 1.0)

    def _match(self, u: np.ndarray, i: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Affinity relative to the user's best item *at that taste mix* ``w`` (1 = the best item then): the
        user response model's match. (:meth:`_rel_affinity`, which the log uses, divides by the mix of the two
        tastes' maxima, an upper bound, so the best item scores below 1 once tastes drift.) The best affinity
        is convex and piecewise linear in ``w``; it is tabulated on ``_GRID`` points of [0, drift] and read by
        linear interpolation (a chord, never below the true value, so the match stays in [0, 1])."""
        if self._best_grid is None:
            grid = np.linspace(0.0, self.cfg.drift, _GRID)
            self._best_grid = np.stack([((1 - g) * self._A0 + g * self._A1).max(axis=1) for g in grid], axis=1)
        x = np.clip(np.asarray(w, dtype=np.float64) / max(self.cfg.drift, 1e-12), 0.0, 1.0) * (_GRID - 1)
        lo = np.minimum(x.astype(np.int64), _GRID - 2)
        f = x - lo
        best = (1 - f) * self._best_grid[u, lo] + f * self._best_grid[u, lo + 1]
        a = (1 - w) * self._A0[u, i] + w * self._A1[u, i]
        return np.clip(a / np.maximum(best, 1e-9), 0.0, 1.0)

    def best_items(self, user_id: str, n: int = 10, ts: int | None = None) -> list[str]:
        """The ``n`` available items this user likes most at ``ts`` (an oracle for tests and reports)."""
        u, w = self.user_index(user_id), float(self._w(ts))
        a = (1 - w) * self._A0[u] + w * self._A1[u]
        t = self.cfg.start_ts_ms + self.cfg.duration_ms if ts is None else ts
        a = np.where(self.item_arrival_ms <= t, a, -1.0)
        return [self.item_ids[k] for k in np.argsort(-a, kind="stable")[:n]]

    # -- the log ---------------------------------------------------------------------------

    def _generate(self) -> list[UserEvent]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 2])
        U, I = cfg.n_users, cfg.n_items
        # Sessions: count per user ~ Poisson(activity * mean), times uniform over the span.
        act = self.user_activity / self.user_activity.mean()
        n_sess = rng.poisson(act * cfg.sessions_per_user)  # [U]
        s_user = np.repeat(np.arange(U), n_sess)  # [S]
        S = s_user.size
        s_start = rng.integers(0, cfg.duration_ms, size=S)  # [S]
        s_len = rng.geometric(1.0 / cfg.session_len, size=S)  # >= 1, mean = session_len
        # Slots: one shown item each.
        slot_sess = np.repeat(np.arange(S), s_len)  # [N]
        N = slot_sess.size
        first = np.cumsum(s_len) - s_len
        slot_pos = np.arange(N) - np.repeat(first, s_len)  # position inside the session
        slot_user = s_user[slot_sess]
        slot_t = s_start[slot_sess] + slot_pos * 30_000  # 30 s per slot
        ts_abs = cfg.start_ts_ms + slot_t
        w = self._w(ts_abs)  # [N]
        # Choose: Gumbel-max over candidates (half popularity-sampled, half uniform: a Zipf head plus
        # a long tail), among items that exist at that time and were not shown earlier in the session.
        # Position by position, so the no-repeat mask sees the session's earlier choices.
        C = cfg.candidates
        chosen = np.empty(N, dtype=np.int64)
        cdf = np.cumsum(self.item_popularity)
        initial = np.flatnonzero(self.item_arrival_ms == cfg.start_ts_ms)
        shown = np.full((S, int(s_len.max())), -1, dtype=np.int64)  # [S, max_len] items shown so far
        for p in range(int(s_len.max())):
            sl = np.flatnonzero(slot_pos == p)  # slots at position p
            n = sl.size
            cand = np.where(rng.random((n, C)) < 0.5,
                            np.minimum(np.searchsorted(cdf, rng.random((n, C))), I - 1),
                            rng.integers(I, size=(n, C)))  # [n, C]
            uu = np.repeat(slot_user[sl, None], C, axis=1)
            ww = np.repeat(w[sl, None], C, axis=1)
            util = cfg.beta * self._rel_affinity(uu, cand, ww) + rng.gumbel(size=(n, C))
            bad = self.item_arrival_ms[cand] > ts_abs[sl, None]
            if p:
                bad |= (cand[:, :, None] == shown[slot_sess[sl], None, :p]).any(axis=2)
            util[bad] = -np.inf
            best = util.argmax(axis=1)
            c = cand[np.arange(n), best]
            none = ~np.isfinite(util[np.arange(n), best])  # rare: nothing usable -> an initial item
            c[none] = initial[rng.integers(initial.size, size=int(none.sum()))]
            chosen[sl] = c
            shown[slot_sess[sl], p] = c
        rel = self._rel_affinity(slot_user, chosen, w)  # [N]
        # Fatigue: the k-th earlier same-primary-topic item in the session multiplies engagement by fatigue^k.
        topic = self.item_primary[chosen]
        key = slot_sess.astype(np.int64) * cfg.n_topics + topic
        order = np.lexsort((slot_pos, key))
        ks = key[order]
        grp_start = np.r_[0, np.flatnonzero(ks[1:] != ks[:-1]) + 1]
        rank_sorted = np.arange(N) - np.repeat(grp_start, np.diff(np.r_[grp_start, N]))
        repeat = np.empty(N, dtype=np.int64)
        repeat[order] = rank_sorted
        eng = rel * cfg.fatigue ** repeat
        return self._reactions(rng, slot_user, chosen, ts_abs, eng, request_ids=None, positions=None,
                               id_prefix=f"s{cfg.seed}-")

    def _reactions(self, rng: np.random.Generator, users: np.ndarray, items: np.ndarray, ts: np.ndarray,
                   eng: np.ndarray, request_ids: list[str] | None, positions: np.ndarray | None,
                   id_prefix: str, examined: np.ndarray | None = None) -> list[UserEvent]:
        """Turn shown items with engagement ``eng`` ∈ [0, 1] into events (vectorised): the log's reaction model."""
        N = users.size
        if examined is None:
            examined = np.ones(N, dtype=bool)
        p_click = 0.03 + 0.8 * eng ** 2
        click = examined & (rng.random(N) < p_click)
        watch_frac = np.clip(0.15 + 0.85 * eng + rng.normal(0, 0.1, N), 0.02, 1.0)
        watch_ms = np.minimum(self.item_length_ms[items] * watch_frac, 86_400_000).astype(np.int64)
        extras = [("like", 0.55), ("share", 0.15), ("comment", 0.08), ("follow", 0.04), ("purchase", 0.02)]
        parts = []  # (mask, type, offset ms)
        if self.cfg.emit_impressions or request_ids is not None:
            parts.append((np.ones(N, dtype=bool), "impression", 0))
        parts.append((click, "click", 400))
        parts.append((click, "watch", 800))
        for j, (name, p) in enumerate(extras):
            parts.append((click & (rng.random(N) < p * eng), name, 1200 + 100 * j))
        parts.append((examined & ~click & (rng.random(N) < 0.5 + 0.4 * (1 - eng)), "skip", 300))
        return self._records(users, items, ts, watch_ms, parts, request_ids, positions, id_prefix)

    def _records(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray, watch_ms: np.ndarray,
                 parts: list, request_ids: list[str] | None, positions: np.ndarray | None,
                 id_prefix: str) -> list[UserEvent]:
        """Event records of ``N`` slots: ``parts`` is ``(mask [N], type, offset ms)`` in tie-break order;
        events are sorted by time, then slot, then offset, and numbered ``{id_prefix}{n}``."""
        slot_idx, types, ev_ts, sub = [], [], [], []
        for k, (mask, name, off) in enumerate(parts):
            idx = np.flatnonzero(mask)
            slot_idx.append(idx)
            types.append(np.full(idx.size, k, dtype=np.int64))
            ev_ts.append(ts[idx] + off)
            sub.append(np.full(idx.size, off, dtype=np.int64))
        slot_idx, types, ev_ts, sub = map(np.concatenate, (slot_idx, types, ev_ts, sub))
        order = np.lexsort((sub, slot_idx, ev_ts))
        names = [p[1] for p in parts]
        uid, iid = self.user_ids, self.item_ids
        out = []
        for n, o in enumerate(order.tolist()):
            s = int(slot_idx[o])
            name = names[types[o]]
            out.append(UserEvent(
                event_id=f"{id_prefix}{n}", user_id=uid[users[s]], item_id=iid[items[s]], type=name,
                ts=int(ev_ts[o]), watch_ms=int(watch_ms[s]) if name == "watch" else None,
                request_id=None if request_ids is None else request_ids[s],
                position=None if positions is None else int(positions[s])))
        return out

    @property
    def user_events(self) -> list[UserEvent]:
        """The whole interaction log in event-time order (generated once, cached)."""
        if self._user_events is None:
            self._user_events = self._generate()
        return self._user_events

    def stream(self) -> Iterator[UserEvent | ItemEvent]:
        """User and item events in event-time order (items appear before anyone sees them)."""
        return merge_by_time(self._catalog, self.user_events)

    def dataset(self) -> Dataset:
        """The world's log as a :class:`Dataset`."""
        return Dataset(f"synthetic-s{self.cfg.seed}", list(self.user_events), self.catalog,
                       {"source": "synthetic", "config": self.cfg})

    # -- closed loop -----------------------------------------------------------------------

    def session_arrays(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(rel, topic, shown, length_ms, quality)``, each ``[S, K]``, of sessions ``items`` ``[S, K]`` (world item
        indices, −1 for an empty slot or an unknown item) served to ``users`` ``[S]`` at ``ts`` ``[S]``:
        the inputs of :func:`ingest.user_response.respond_arrays`. ``rel`` is the affinity relative to the
        user's best item at ``ts`` (:meth:`_match`), 0 for an item shown earlier in the session or not
        existing yet; ``quality`` the item's popularity percentile (:attr:`item_quality`)."""
        items = np.asarray(items, dtype=np.int64)
        S, K = items.shape
        shown = items >= 0
        it = np.where(shown, items, 0)
        ts = np.asarray(ts, dtype=np.int64).reshape(S)
        w = np.asarray(self._w(ts), dtype=np.float64).reshape(S, 1)
        rel = self._match(np.asarray(users, dtype=np.int64).reshape(S, 1), it, w)
        dup = np.zeros((S, K), dtype=bool)
        for p in range(1, K):
            dup[:, p] = (items[:, :p] == items[:, p:p + 1]).any(axis=1)
        rel = np.where(dup | (self.item_arrival_ms[it] > ts[:, None]) | ~shown, 0.0, rel)
        return rel, self.item_primary[it], shown, self.item_length_ms[it], self.item_quality[it]

    @staticmethod
    def draw_uniforms(rng: np.random.Generator, n_sessions: int, k: int) -> np.ndarray:
        """The randomness of ``n_sessions`` answers of ``k`` slots (:func:`ingest.user_response.draw_uniforms`)."""
        return draw_uniforms(rng, n_sessions, k)

    def respond_arrays(self, u: np.ndarray, users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> Responses:
        """The answers to ``S`` sessions at once (:func:`ingest.user_response.respond_arrays` on
        :meth:`session_arrays`), with the randomness ``u`` ``[S, K, N_UNIFORMS]`` of
        :func:`ingest.user_response.draw_uniforms`."""
        rel, topic, shown, _, quality = self.session_arrays(users, items, ts)
        return respond_arrays(self.response, rel, topic, shown, u, quality)

    def session_index(self, item_ids: Sequence[str]) -> np.ndarray:
        """World item indices of ``item_ids`` (``[K]`` int64), −1 for an unknown id or an empty slot."""
        return np.array([self._item_index.get(i, -1) if isinstance(i, str) else -1 for i in item_ids],
                        dtype=np.int64)

    def respond(self, user_id: str, item_ids: list[str], request_id: str, ts: int) -> list[UserEvent]:
        """How ``user_id`` reacts to the session ``item_ids`` served at ``ts`` (closed-loop simulator).

        The user response model of :mod:`ingest.user_response` (cascade
        attention, a logit choice between click, pass and dislike, fatigue for
        same-topic items, leaving when bored, watch time by match) with
        :attr:`response`'s parameters. Slot ``k`` is position ``k``; an
        unknown item id is not shown (no event) but keeps its position.
        Events: ``impression`` for every slot the user reached, then for an
        examined item ``click`` + ``watch`` (+ like / share / comment / follow
        / purchase), ``skip`` or ``dislike``; slot ``k``'s events are
        ``2 s · k`` after ``ts``. Every event carries ``request_id`` and
        ``position``; ids are ``{request_id}-{n}`` in time order.
        Reproducible: the randomness is seeded by (world seed, request_id), so
        two policies served under the same request id meet the same draws.
        """
        u = self.user_index(user_id)
        idx = self.session_index(item_ids)[None, :]  # [1, K]
        if not (idx >= 0).any():
            return []
        rng = np.random.default_rng([self.cfg.seed, 3, zlib.crc32(request_id.encode())])
        K = idx.shape[1]
        rel, topic, shown, length, quality = self.session_arrays(np.array([u]), idx, np.array([ts]))
        r = respond_arrays(self.response, rel, topic, shown, draw_uniforms(rng, 1, K), quality)
        pos = np.arange(K)
        slot_ts = int(ts) + pos * 2_000
        parts = [(r.reached[0], "impression", 0), (r.skip[0], "skip", 300), (r.dislike[0], "dislike", 300),
                 (r.click[0], "click", 400), (r.click[0], "watch", 800)]
        parts += [(r.extras[0, :, j], name, 1200 + 100 * j) for j, name in enumerate(EXTRA_TYPES)]
        return self._records(np.full(K, u), np.where(shown[0], idx[0], 0), slot_ts, r.watch_ms(length)[0],
                             parts, [request_id] * K, pos, id_prefix=f"{request_id}-")

    def expected_value(self, user_id: str, item_ids: Sequence[str], ts: int, reward=None,
                       draws: int | None = None, seed: int = 0) -> float:
        """The session's expected reward when ``user_id`` is served ``item_ids`` at ``ts``: its true value.

        A Monte-Carlo mean over ``draws`` (default :attr:`ResponseConfig.draws`)
        answers of the user response model (the watch cap of the reward makes
        the exact expectation a sum over the joint watch distribution); the
        draws are seeded by (world seed, ``seed``, user) only, so all of a
        user's sessions are scored with the same draws (common random numbers:
        the difference between two sessions' values has far less noise than
        each), and different users' draws are independent.
        ``reward`` is the product's session reward: an
        :class:`actors.reward_spec.RewardSpec`, a mapping of its fields, or
        None for its defaults (the weights of
        :func:`serving.experiments.rewards.session_reward` too).
        """
        return float(self.expected_values([user_id], [item_ids], ts, reward, draws, seed)[0])

    def expected_values(self, user_ids: Sequence[str], sessions: Sequence[Sequence[str]], ts, reward=None,
                        draws: int | None = None, seed: int = 0) -> np.ndarray:
        """:meth:`expected_value` of many sessions (``ts``: one time or one per session). ``[S]`` floats."""
        from actors.reward_spec import RewardSpec

        spec = RewardSpec.of(reward)
        if spec.duration_aware:
            raise ValueError("expected_value scores watch time as capped minutes; a duration_aware reward needs "
                             "each user's watch history, which a session's value does not have")
        if len(user_ids) != len(sessions):
            raise ValueError(f"{len(user_ids)} users for {len(sessions)} sessions; give one user per session")
        S = len(sessions)
        n = self.response.draws if draws is None else int(draws)
        if n < 1:
            raise ValueError(f"draws={n} must be >= 1")
        users = np.array([self.user_index(u) for u in user_ids], dtype=np.int64)
        ts_arr = np.broadcast_to(np.asarray(ts, dtype=np.int64), (S,))
        K = max((len(s) for s in sessions), default=0)
        out = np.zeros(S)
        if S == 0 or K == 0:
            return out
        items = np.full((S, K), -1, dtype=np.int64)
        for j, s in enumerate(sessions):
            items[j, :len(s)] = self.session_index(s)
        rel, topic, shown, length, quality = self.session_arrays(users, items, ts_arr)
        draws_of: dict[int, np.ndarray] = {}  # user -> [n, K, N_UNIFORMS]: the same for all their sessions
        chunk = max(1, (1 << 16) // n)
        for a in range(0, S, chunk):
            b = min(S, a + chunk)
            for x in users[a:b].tolist():
                if x not in draws_of:
                    draws_of[x] = draw_uniforms(np.random.default_rng([self.cfg.seed, 4, int(seed), x]), n, K)
            u = np.concatenate([draws_of[x] for x in users[a:b].tolist()])  # [(b - a) * n, K, N_UNIFORMS]
            rep = lambda x: np.repeat(x[a:b], n, axis=0)  # noqa: E731  [(b - a) * n, K]
            r = respond_arrays(self.response, rep(rel), rep(topic), rep(shown), u, rep(quality))
            vals = session_rewards(r.counts(), r.watch_ms(rep(length)).sum(1), spec.weights, spec.watch_cap_min)
            out[a:b] = vals.reshape(b - a, n).mean(axis=1)
        return out
