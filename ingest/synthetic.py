"""A seeded synthetic world: users with drifting latent tastes, topical items, a closed loop.

Why a world and not just a log: the closed-loop simulator (DESIGN.md §6) needs
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
* Reaction to a shown item follows the relative affinity ``r`` ∈ [0, 1]:
  impression, then click → watch (``watch_ms`` ∝ r · the item's length) →
  like / share / comment / follow / purchase with probabilities growing with
  r, or a skip. Repeating a topic inside a session tires the user (fatigue),
  which gives session-level generation something to learn.

The same reaction model answers :meth:`SyntheticWorld.respond` for served
sessions (with a position-dependent examination probability, as in cascade
click models), seeded by the request id, so replies are reproducible.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ingest.contract import ItemEvent, UserEvent
from ingest.datasets import Dataset, merge_by_time

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

#: Event types the world emits, with a rough share of what a slot produces.
WORLD_EVENT_TYPES = ("impression", "click", "watch", "like", "share", "comment", "follow", "purchase", "skip")


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

    def __init__(self, cfg: WorldConfig = WorldConfig()):
        self.cfg = cfg
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
        """Turn shown items with engagement ``eng`` ∈ [0, 1] into events (vectorised)."""
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

    def respond(self, user_id: str, item_ids: list[str], request_id: str, ts: int) -> list[UserEvent]:
        """How ``user_id`` reacts to the session ``item_ids`` served at ``ts`` (closed-loop simulator).

        Position ``k`` is examined with probability 0.92^k (cascade-style
        examination); engagement is the user's relative affinity at ``ts`` times
        ``fatigue`` per earlier same-topic item, and 0 for a repeat or an item
        that does not exist (yet). Every returned event carries ``request_id``
        and ``position``; ids are ``{request_id}-{n}``. Reproducible: the
        randomness is seeded by (world seed, request_id).
        """
        u = self.user_index(user_id)
        rng = np.random.default_rng([self.cfg.seed, 3, zlib.crc32(request_id.encode())])
        known = [(k, self._item_index[i]) for k, i in enumerate(item_ids) if i in self._item_index]
        if not known:
            return []
        pos = np.array([k for k, _ in known], dtype=np.int64)
        items = np.array([i for _, i in known], dtype=np.int64)
        n = items.size
        w = np.full(n, float(self._w(ts)))
        eng = self._rel_affinity(np.full(n, u), items, w)
        seen_topic: dict[int, int] = {}
        seen_item: set[int] = set()
        for j in range(n):
            it = int(items[j])
            t = int(self.item_primary[it])
            eng[j] *= self.cfg.fatigue ** seen_topic.get(t, 0)
            seen_topic[t] = seen_topic.get(t, 0) + 1
            if it in seen_item or self.item_arrival_ms[it] > ts:
                eng[j] = 0.0
            seen_item.add(it)
        examined = rng.random(n) < 0.92 ** pos
        slot_ts = np.full(n, int(ts), dtype=np.int64) + pos * 2_000
        return self._reactions(rng, np.full(n, u), items, slot_ts, eng, [request_id] * n, pos,
                               id_prefix=f"{request_id}-", examined=examined)
