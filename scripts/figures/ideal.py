"""The hit ratio of an ideal cache under YCSB's scrambled zipfian, as `scalio-ycsb` draws keys.

The key chooser (benches/src/ycsb/generator/zipfian.rs, `ScrambledZipfianGenerator`) draws a rank
from Gray's zipfian sampler over `items` = 10^10 + 1 ranks (YCSB's ITEM_COUNT, with ζ precomputed
at θ = 0.99), and maps rank r to key `fnvhash64(r) mod keyspace`; the workload draws again while
the key is not a loaded record (`next_keynum`). For workloads without inserts (A, B, C, F) the key
space is `records + 1` (the generator's range ends one past the last record), so the draws are
conditioned on `key < records`.

A perfect cache of `slots` entries holds the `slots` most likely keys; its hit ratio is their
probability. Gray's sampler is not a true zipfian (rank 3 gets ~20% more weight at θ = 0.99);
this model follows the sampler as implemented, interval by interval of the uniform draw.

Exact mode hashes every rank. With 10^10 ranks that is out of reach, so past `head` ranks the
remaining probability (the tail) is spread evenly over the key space, and [`Ideal.error_bound`]
bounds what that costs: treating each tail rank's key as an independent uniform draw, the tail's
share of a key has mean T/M and standard deviation σ (from Σ p_r² over the tail, bounded by an
integral), and a perfect cache could gain at most the expected excess of the `slots` largest tail
shares over their mean, `keys · σ · φ(Φ⁻¹(1 - slots/keys))`, and lose at most 3σ√slots. The tests
check the estimate and the bound against exhaustive computation on small cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 1_099_511_628_211
U64 = (1 << 64) - 1

# ScrambledZipfianGenerator: ZipfianGenerator(0, ITEM_COUNT) has ITEM_COUNT + 1 ranks.
SCRAMBLED_ITEM_COUNT = 10_000_000_000
SCRAMBLED_RANKS = SCRAMBLED_ITEM_COUNT + 1
# ζ(10^10, 0.99), YCSB's precomputed ZETAN, used only at θ = 0.99 (as the Rust generator does).
SCRAMBLED_ZETAN = 26.46902820178302
ZIPFIAN_CONSTANT = 0.99
# Ranks hashed exactly by default: 10^7 as the estimate; numpy hashes them in seconds.
DEFAULT_HEAD = 10_000_000
# Without numpy, pure Python hashes this many ranks at most (about a second per 10^6).
PURE_PYTHON_MAX_HEAD = 2_000_000


class IdealError(ValueError):
    """Parameters the model cannot evaluate."""


def fnvhash64_unsigned_abs(rank: int) -> int:
    """`fnvhash64(rank as i64).unsigned_abs()`: FNV-1a 64 of the rank's 8 little-endian bytes,
    then the magnitude of that as a signed 64-bit value (2^63 for the one hash equal to i64::MIN)."""
    h = FNV_OFFSET_BASIS_64
    v = rank & U64
    for _ in range(8):
        h ^= v & 0xFF
        h = (h * FNV_PRIME_64) & U64
        v >>= 8
    return h if h < (1 << 63) else ((1 << 64) - h)


def zeta_direct(n: int, theta: float) -> float:
    """Σ_{i=1}^{n} i^-θ, term by term (as `zeta_incremental` from 0)."""
    total = 0.0
    for i in range(n):
        total += 1.0 / float(i + 1) ** theta
    return total


def zeta_euler_maclaurin(n: int, theta: float) -> float:
    """ζ(n, θ) as the Rust `zeta_euler_maclaurin` computes it (same terms, same order)."""
    head_n = 1000
    if n <= head_n:
        return zeta_direct(n, theta)
    head = zeta_direct(head_n - 1, theta)
    a, b, s = float(head_n), float(n), theta
    log_ratio = math.log(b / a)
    integral = log_ratio if s == 1.0 else a ** (1.0 - s) * math.expm1((1.0 - s) * log_ratio) / (1.0 - s)

    def f(x: float) -> float:
        return x ** (-s)

    def d1(x: float) -> float:
        return -s * x ** (-s - 1.0)

    def d3(x: float) -> float:
        return -s * (s + 1.0) * (s + 2.0) * x ** (-s - 3.0)

    def d5(x: float) -> float:
        return -s * (s + 1.0) * (s + 2.0) * (s + 3.0) * (s + 4.0) * x ** (-s - 5.0)

    tail = integral + (f(a) + f(b)) / 2.0 + (d1(b) - d1(a)) / 12.0 - (d3(b) - d3(a)) / 720.0 + (d5(b) - d5(a)) / 30240.0
    return head + tail


def zeta(n: int, theta: float) -> float:
    """The Rust `zeta`: direct up to 10^8 terms, Euler–Maclaurin beyond."""
    return zeta_direct(n, theta) if n <= 100_000_000 else zeta_euler_maclaurin(n, theta)


@dataclass(frozen=True)
class GraySampler:
    """`ZipfianGenerator` over ranks [0, items) with constant θ and its ζ value: what `next` returns
    for a uniform u in [0, 1), as probabilities of rank intervals."""

    items: int
    theta: float
    zetan: float

    @staticmethod
    def scrambled(theta: float, items: int = SCRAMBLED_RANKS) -> GraySampler:
        """The sampler inside `ScrambledZipfianGenerator::new` (YCSB's ζ at θ = 0.99)."""
        if not (math.isfinite(theta) and theta >= 0.0 and theta != 1.0):
            raise IdealError(f"zipfian constant {theta} (must be finite, >= 0 and not 1)")
        if items < 1:
            raise IdealError("no ranks")
        if theta == ZIPFIAN_CONSTANT and items == SCRAMBLED_RANKS:
            return GraySampler(items, theta, SCRAMBLED_ZETAN)
        return GraySampler(items, theta, zeta(items, theta))

    @property
    def zeta2(self) -> float:
        return 1.0 + 1.0 / 2.0**self.theta

    @property
    def eta(self) -> float:
        return (1.0 - (2.0 / self.items) ** (1.0 - self.theta)) / (1.0 - self.zeta2 / self.zetan)

    def draw(self, u: float) -> int:
        """The rank `next` returns for the uniform draw u: the Rust code, line by line."""
        uz = u * self.zetan
        if uz < 1.0:
            return 0
        if uz < 1.0 + 0.5**self.theta:
            return 1
        alpha = 1.0 / (1.0 - self.theta)
        offset = int(self.items * (self.eta * u - self.eta + 1.0) ** alpha)
        return min(offset, self.items - 1)

    def _formula_below(self, k: int) -> float:
        """The u below which the formula's offset is < k (offset grows with u for every θ)."""
        if k <= 0:
            return -math.inf
        if k >= self.items:
            return math.inf  # the clamp keeps every offset below `items`
        return 1.0 + ((k / self.items) ** (1.0 - self.theta) - 1.0) / self.eta

    def cdf(self, k: int) -> float:
        """P(rank < k)."""
        first = 1.0 / self.zetan  # u below this: rank 0
        second = (1.0 + 0.5**self.theta) / self.zetan  # u below this: rank 1
        mass = 0.0
        if k > 0:
            mass += min(first, 1.0)
        if k > 1:
            mass += max(0.0, min(second, 1.0) - first)
        formula_start = min(second, 1.0)
        mass += max(0.0, min(self._formula_below(k), 1.0) - formula_start)
        return mass

    def pmf(self, ranks: int) -> list[float]:
        """P(rank = k) for k < ranks (pure Python)."""
        previous = 0.0
        out = []
        for k in range(ranks):
            c = self.cdf(k + 1)
            out.append(c - previous)
            previous = c
        return out

    def tail_square_sum_bound(self, head: int) -> float:
        """An upper bound of Σ_{r ≥ head} P(rank = r)²: the formula's density is
        c·x^-θ with c = (1-θ) items^(θ-1) / η, so P(r) ≤ c r^-θ and P(r)² ≤ c² ∫_{r-1}^{r} x^-2θ dx."""
        if head >= self.items:
            return 0.0
        lo = max(head - 1, 1)
        c = (1.0 - self.theta) * self.items ** (self.theta - 1.0) / self.eta
        a = 2.0 * self.theta
        hi = float(self.items)
        integral = math.log(hi / lo) if a == 1.0 else (hi ** (1.0 - a) - lo ** (1.0 - a)) / (1.0 - a)
        bound = c * c * integral
        if head <= 2:  # ranks 0 and 1 are not of the formula
            bound += self.cdf(1) ** 2 + (self.cdf(2) - self.cdf(1)) ** 2
        return bound


@dataclass(frozen=True)
class Ideal:
    """A perfect cache's hit ratio and how it was computed."""

    hit_ratio: float
    records: int
    slots: int
    theta: float
    head: int  # ranks hashed exactly
    exact: bool  # every rank hashed
    error_bound: float  # 0 when exact; see the module text


def _key_masses_python(pmf: list[float], keyspace: int, records: int) -> dict[int, float]:
    masses: dict[int, float] = {}
    for rank, p in enumerate(pmf):
        key = fnvhash64_unsigned_abs(rank) % keyspace
        if key < records:
            masses[key] = masses.get(key, 0.0) + p
    return masses


def _top_python(masses: dict[int, float], slots: int) -> tuple[float, float]:
    values = sorted(masses.values(), reverse=True)
    return sum(values[:slots]), sum(values)


def _head_numpy(sampler: GraySampler, head: int, keyspace: int, records: int, slots: int) -> tuple[float, float]:
    """(Σ of the `slots` largest per-key head masses, Σ of all valid head mass), with numpy."""
    import numpy as np

    masses = np.zeros(records, dtype=np.float64)
    chunk = 1 << 22
    first, second = 1.0 / sampler.zetan, (1.0 + 0.5**sampler.theta) / sampler.zetan
    for start in range(0, head, chunk):
        ks = np.arange(start, min(start + chunk, head) + 1, dtype=np.float64)
        # cdf(k) for k in [start, end] vectorised (the same pieces as GraySampler.cdf).
        with np.errstate(divide="ignore"):  # k = 0 at θ > 1: replaced by -inf just below
            below = 1.0 + ((ks / sampler.items) ** (1.0 - sampler.theta) - 1.0) / sampler.eta
        below = np.where(ks >= sampler.items, np.inf, below)
        below = np.where(ks <= 0, -np.inf, below)
        cdf = np.clip(np.minimum(below, 1.0) - min(second, 1.0), 0.0, None)
        cdf += np.where(ks > 0, min(first, 1.0), 0.0)
        cdf += np.where(ks > 1, max(0.0, min(second, 1.0) - first), 0.0)
        p = np.diff(cdf)
        ranks = np.arange(start, start + len(p), dtype=np.uint64)
        h = np.full(len(p), FNV_OFFSET_BASIS_64, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for shift in range(0, 64, 8):
                h ^= (ranks >> np.uint64(shift)) & np.uint64(0xFF)
                h *= np.uint64(FNV_PRIME_64)
            negative = h >= np.uint64(1 << 63)
            h = np.where(negative, ~h + np.uint64(1), h)
        keys = h % np.uint64(keyspace)
        valid = keys < np.uint64(records)
        masses += np.bincount(keys[valid].astype(np.int64), weights=p[valid], minlength=records)[:records]
    valid_mass = float(masses.sum())
    if slots >= records:
        return valid_mass, valid_mass
    top = np.partition(masses, records - slots)[records - slots :]
    return float(top.sum()), valid_mass


def _have_numpy() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def ideal_hit_ratio(
    records: int,
    theta: float,
    slots: int,
    *,
    keyspace: int | None = None,
    head: int = DEFAULT_HEAD,
    items: int = SCRAMBLED_RANKS,
    use_numpy: bool | None = None,
) -> Ideal:
    """The hit ratio of a cache holding the `slots` most likely of `records` keys.

    `keyspace` is the scrambled generator's key count (default `records + 1`: workloads without
    inserts); draws at or past `records` are drawn again. The first `head` ranks are hashed
    exactly, the rest spread evenly (exact when `head >= items`)."""
    if records < 1 or slots < 0:
        raise IdealError(f"records {records} and slots {slots}")
    keyspace = records + 1 if keyspace is None else keyspace
    if keyspace < records:
        raise IdealError(f"key space {keyspace} smaller than the records {records}")
    sampler = GraySampler.scrambled(theta, items)
    head = min(head, items)
    if use_numpy is None:
        use_numpy = _have_numpy()
    if not use_numpy and head > PURE_PYTHON_MAX_HEAD:
        raise IdealError(f"{head:,} ranks need numpy (pure Python stops at {PURE_PYTHON_MAX_HEAD:,})")
    slots = min(slots, records)
    if use_numpy:
        head_top, head_valid = _head_numpy(sampler, head, keyspace, records, slots)
    else:
        head_top, head_valid = _top_python(_key_masses_python(sampler.pmf(head), keyspace, records), slots)
    tail = max(0.0, 1.0 - sampler.cdf(head))
    per_key = tail / keyspace
    valid = head_valid + per_key * records
    estimate = (head_top + per_key * slots) / valid
    bound = 0.0
    if tail > 0.0 and 0 < slots < records:
        sigma = math.sqrt(sampler.tail_square_sum_bound(head) / keyspace)
        share = slots / records
        gain = records * sigma * NormalDist().pdf(NormalDist().inv_cdf(1.0 - share))
        loss = 3.0 * sigma * math.sqrt(slots)
        bound = max(gain, loss) / valid
    return Ideal(min(estimate, 1.0), records, slots, theta, head, head >= items, bound)
