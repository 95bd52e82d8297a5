"""Topic modeling (Gaia's third application): LDA by collapsed Gibbs sampling.

The shared model is two tables of integer counts, kept in float32 (exact below 2**24):
`word_topic` (vocabulary x topics: how many tokens of each word are assigned to each
topic) and `topic_total` (1 x topics). A worker owns its documents' tokens, their topic
assignments and the document-topic counts; these never leave it. Its update is the count
delta of its sweep (or a share of one, `clock_fraction`), so summed over every worker it
is exactly the change in the corpus's assignments, and replicas end at the counts of the
final assignments (the conservation tests).

The sampler (AD-LDA within a worker): each clock, the worker's tokens are resampled in
batches of `batch`; a batch's tokens are drawn together from the counts as they stood
before the batch (each token's own assignment removed), so the tokens of one batch do
not see each other's new topics — the same approximation distributed LDA makes between
workers, at a smaller scale. Counts seen stale (a remote region's deltas not yet
applied, or held back by Gaia's filter) can make a `word_topic` entry look smaller than
the worker's own tokens of it; the sampler clips what it reads at 0 when it weighs
topics, and never changes the counts it sends because of that.

Objective: held-out perplexity by document completion. Each held-out document's even
tokens are observed: its topic mixture is fitted to them with the topics fixed (20
fixed-point steps of theta_dk ∝ alpha + sum_i r_ik, r_ik ∝ theta_dk phi_k,w_i); the odd
tokens are scored: perplexity = exp(-sum log sum_k theta_dk phi_k,w / tokens). Lower is
better; phi_kw = (n_wk + beta) / (n_k + V beta), with n_k the column sums of word_topic.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .base import DTYPE, Params, Partition, Schedule, Workload, split_region_first

#: Fixed-point steps of the held-out documents' topic mixtures.
_FOLD_IN_STEPS = 20


@dataclass(frozen=True)
class Corpus:
    """Documents as tokens: token i is word `word[i]` of document `doc[i]`."""

    doc: np.ndarray  # int64, sorted
    word: np.ndarray  # int64
    n_docs: int
    vocab: tuple[str, ...]
    #: The topics the documents were drawn from (synthetic corpora only): topics x vocab.
    true_topics: np.ndarray | None = None


class LDA(Workload):
    """LDA over a corpus; tables `word_topic` (V x K) and `topic_total` (1 x K)."""

    objective_name = "perplexity"
    #: Updates are count deltas: they must be summed, never averaged.
    update_kind = "counts"

    def __init__(self, corpus: Corpus, *, topics: int = 20, alpha: float = 0.1,
                 beta: float = 0.01, batch: int = 256, test_fraction: float = 0.1,
                 seed: int = 0, clock_fraction: float = 1.0, name: str = "lda") -> None:
        if topics < 2 or alpha <= 0 or beta <= 0 or batch < 1 or not 0 < test_fraction < 1:
            raise ValueError("lda: need topics >= 2, alpha > 0, beta > 0, batch >= 1, "
                             "0 < test_fraction < 1")
        if corpus.n_docs < 2 or len(corpus.word) == 0:
            raise ValueError("lda: the corpus needs at least two documents with words")
        self.name = name
        self.corpus = corpus
        self.topics, self.alpha, self.beta, self.batch, self.seed = \
            topics, alpha, beta, batch, seed
        self.schedule = Schedule(clock_fraction, 0.0)
        self.vocab_size = len(corpus.vocab)
        rng = np.random.default_rng(seed)
        test_doc = rng.random(corpus.n_docs) < test_fraction
        test_doc[rng.integers(corpus.n_docs)] = True  # at least one held-out document
        self.test_docs = np.flatnonzero(test_doc)
        self.train_docs = np.flatnonzero(~test_doc)
        is_test = test_doc[corpus.doc]
        self.train_tokens = np.flatnonzero(~is_test)
        #: The initial topic of every token (train tokens only are used), the same for
        #: every process and every partitioning: init_params counts exactly these.
        self.z0 = np.random.default_rng(seed + 1).integers(
            0, topics, len(corpus.word)).astype(np.int32)
        self._test = _held_out(corpus, self.test_docs)

    # -- tables ---------------------------------------------------------------------------

    def table_shapes(self) -> dict[str, tuple[int, int]]:
        return {"word_topic": (self.vocab_size, self.topics), "topic_total": (1, self.topics)}

    def init_params(self) -> Params:
        t = self.train_tokens
        K = self.topics
        wt = np.bincount(self.corpus.word[t] * K + self.z0[t],
                         minlength=self.vocab_size * K).reshape(self.vocab_size, K)
        return {"word_topic": wt.astype(DTYPE),
                "topic_total": np.bincount(self.z0[t], minlength=K)[None].astype(DTYPE)}

    def model_bytes(self) -> int:
        return (self.vocab_size + 1) * self.topics * np.dtype(DTYPE).itemsize

    # -- data -----------------------------------------------------------------------------

    def _doc_regions(self, n_regions: int) -> np.ndarray:
        """Region index of every document (seeded; train and held-out alike)."""
        rng = np.random.default_rng(self.seed + 2)
        return rng.permutation(self.corpus.n_docs) % n_regions

    def partition(self, workers: Mapping[str, int]) -> dict[tuple[str, int], Partition]:
        """Documents go to regions (seeded), then each region's to its workers."""
        regions = list(workers)
        doc_region = self._doc_regions(len(regions))
        docs = split_region_first(doc_region[self.train_docs], regions, workers,
                                  np.random.default_rng(self.seed + 3))
        return {key: self._partition(key[0], key[1], self.train_docs[mine])
                for key, mine in docs.items()}

    def _partition(self, region: str, worker: int, docs: np.ndarray) -> Partition:
        tokens = self.train_tokens[np.isin(self.corpus.doc[self.train_tokens], docs)]
        return self._tokens_partition(region, worker, tokens)

    def _tokens_partition(self, region: str, worker: int, tokens: np.ndarray) -> Partition:
        c = self.corpus
        words, w_local = np.unique(c.word[tokens], return_inverse=True)
        docs, d_local = np.unique(c.doc[tokens], return_inverse=True)
        z = self.z0[tokens].copy()
        ndk = np.zeros((len(docs), self.topics), np.int32)
        np.add.at(ndk, (d_local, z), 1)
        return Partition(region, worker,
                         {"word_topic": words.astype(np.int64),
                          "topic_total": np.zeros(1, np.int64)},
                         {"d": d_local.astype(np.int32), "w": w_local.astype(np.int32),
                          "z": z, "token": tokens.astype(np.int64), "ndk": ndk})

    def test_regions(self, regions: Sequence[str]) -> dict[str, np.ndarray]:
        region = self._doc_regions(len(regions))[self.test_docs]
        return {r: np.flatnonzero(region == k) for k, r in enumerate(regions)}

    def raw_records(self, part: Partition) -> dict[str, np.ndarray]:
        """The partition's tokens (global token ids: document and word are the corpus's)."""
        return {"token": part.data["token"]}

    def partition_records(self, records: Sequence[Mapping[str, np.ndarray]], region: str,
                          workers: int) -> dict[tuple[str, int], Partition]:
        if workers < 1:
            raise ValueError("partition_records needs at least one worker")
        tokens = np.concatenate([r["token"] for r in records]) if records else \
            np.zeros(0, np.int64)
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= len(self.corpus.word)):
            raise ValueError("token records outside the corpus")
        tokens = np.sort(tokens)
        doc_worker = np.random.default_rng(self.seed + 4).permutation(self.corpus.n_docs) \
            % workers
        mine = doc_worker[self.corpus.doc[tokens]]
        return {(region, w): self._tokens_partition(region, w, tokens[mine == w])
                for w in range(workers)}

    # -- training -------------------------------------------------------------------------

    def local_pass(self, params: Params, part: Partition, clock: int) -> Params:
        """Resample the tokens of this clock; returns the counts with this worker's
        changes (exact integers). Mutates the worker's own state in `part.data`."""
        nwk = params["word_topic"].astype(np.float64)
        nk = params["topic_total"][0].astype(np.float64)
        d_all, w_all, z_all, ndk = (part.data[k] for k in ("d", "w", "z", "ndk"))
        K, alpha, vbeta = self.topics, self.alpha, self.vocab_size * self.beta
        order = self.schedule.examples(len(z_all), clock, part, self.seed)
        rng = np.random.default_rng(
            [self.seed, part.worker, zlib.crc32(part.region.encode()), clock])
        for start in range(0, len(order), self.batch):
            idx = order[start:start + self.batch]
            d, w, z = d_all[idx], w_all[idx], z_all[idx]
            np.subtract.at(ndk, (d, z), 1)
            np.subtract.at(nwk, (w, z), 1)
            nk -= np.bincount(z, minlength=K)
            weight = ((ndk[d] + alpha) * (np.maximum(nwk[w], 0.0) + self.beta)
                      / (np.maximum(nk, 0.0) + vbeta))
            cum = np.cumsum(weight, axis=1)
            u = rng.random(len(idx)) * cum[:, -1]
            new = np.minimum((cum < u[:, None]).sum(axis=1), K - 1).astype(np.int32)
            z_all[idx] = new
            np.add.at(ndk, (d, new), 1)
            np.add.at(nwk, (w, new), 1)
            nk += np.bincount(new, minlength=K)
        return {"word_topic": nwk.astype(DTYPE), "topic_total": nk[None].astype(DTYPE)}

    # -- evaluation -----------------------------------------------------------------------

    def topic_word(self, params: Params) -> np.ndarray:
        """phi (topics x vocabulary), each row a distribution over words."""
        nwk = np.maximum(params["word_topic"].astype(np.float64), 0.0)
        return ((nwk + self.beta) / (nwk.sum(0) + self.vocab_size * self.beta)).T

    def evaluate(self, params: Params, subset: np.ndarray | None = None) -> dict[str, float]:
        phi = self.topic_word(params)
        held = self._test if subset is None else _select(self._test, subset)
        n_docs = len(held.docs)
        obs_phi = phi[:, held.obs_word].T  # tokens x K
        theta = np.full((n_docs, self.topics), 1.0 / self.topics)
        for _ in range(_FOLD_IN_STEPS):
            r = theta[held.obs_doc] * obs_phi
            r /= r.sum(1, keepdims=True)
            counts = np.zeros_like(theta)
            np.add.at(counts, held.obs_doc, r)
            theta = counts + self.alpha
            theta /= theta.sum(1, keepdims=True)
        p = np.einsum("ik,ki->i", theta[held.score_doc], phi[:, held.score_word])
        tokens = len(p)
        perplexity = float(np.exp(-np.log(p).sum() / tokens)) if tokens else float("nan")
        return {"objective": perplexity, "perplexity": perplexity,
                "held_out_tokens": float(tokens)}

    def topic_recovery(self, params: Params) -> float:
        """Synthetic corpora: the mean over true topics of the best cosine similarity of
        a learned topic's word distribution to it (1: every topic found exactly)."""
        truth = self.corpus.true_topics
        if truth is None:
            raise ValueError(f"workload {self.name} has no true topics to compare with")
        learned = self.topic_word(params)
        a = truth / np.linalg.norm(truth, axis=1, keepdims=True)
        b = learned / np.linalg.norm(learned, axis=1, keepdims=True)
        return float((a @ b.T).max(axis=1).mean())

    def describe(self) -> dict[str, object]:
        c = self.corpus
        return {**super().describe(), "documents": c.n_docs, "tokens": len(c.word),
                "train_tokens": len(self.train_tokens), "vocabulary": self.vocab_size,
                "topics": self.topics, "alpha": self.alpha, "beta": self.beta,
                "held_out_documents": len(self.test_docs)}


@dataclass(frozen=True)
class _HeldOut:
    """Held-out documents, local ids 0..n-1: observed (even) and scored (odd) tokens."""

    docs: np.ndarray
    obs_doc: np.ndarray
    obs_word: np.ndarray
    score_doc: np.ndarray
    score_word: np.ndarray


def _held_out(corpus: Corpus, docs: np.ndarray) -> _HeldOut:
    mask = np.isin(corpus.doc, docs)
    doc, word = corpus.doc[mask], corpus.word[mask]
    local = np.searchsorted(docs, doc)
    position = np.arange(len(doc)) - np.searchsorted(doc, doc)  # index within its document
    even = position % 2 == 0
    return _HeldOut(docs, local[even], word[even], local[~even], word[~even])


def _select(held: _HeldOut, subset: np.ndarray) -> _HeldOut:
    keep = np.zeros(len(held.docs), bool)
    keep[subset] = True
    new_id = np.cumsum(keep) - 1
    obs, score = keep[held.obs_doc], keep[held.score_doc]
    return _HeldOut(held.docs[keep], new_id[held.obs_doc[obs]], held.obs_word[obs],
                    new_id[held.score_doc[score]], held.score_word[score])


# -- corpora ------------------------------------------------------------------------------

#: English function words, and Early Modern English ones (thou, hath, ...), left out.
_STOP_TEXT = """
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its
itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself
yourselves shall may might must let yet upon o oh ay ah well come go make say tell like
thou thee thy thine ye art hath doth dost didst hast wilt shalt canst wouldst couldst
shouldst ere tis twas th 'tis 'twas hither thither whither wherefore whence thus nay yea
sir enter exit exeunt re one two much many every lord good
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")
_SPEAKER_RE = re.compile(r"[A-Z][A-Za-z ]*\.")


def bag_of_words(texts: Mapping[str, str], *, doc_words: int = 200, vocab: int = 2000,
                 min_docs: int = 3) -> Corpus:
    """Documents of `doc_words` consecutive words of each text (speaker lines such as
    "Hor." dropped, lower-cased, words of two letters or fewer and STOP_WORDS left out),
    over the `vocab` most frequent remaining words that occur in at least `min_docs`
    documents (ties by spelling); words outside the vocabulary are dropped."""
    docs: list[list[str]] = []
    for name in sorted(texts):
        words: list[str] = []
        for line in texts[name].splitlines():
            if _SPEAKER_RE.fullmatch(line.strip()):
                continue
            words.extend(_WORD_RE.findall(line.lower()))
        for start in range(0, len(words), doc_words):
            kept = [w for w in words[start:start + doc_words]
                    if len(w) > 2 and w not in STOP_WORDS]
            if kept:
                docs.append(kept)
    freq = Counter(w for d in docs for w in d)
    spread = Counter(w for d in docs for w in set(d))
    ranked = sorted((w for w in freq if spread[w] >= min_docs), key=lambda w: (-freq[w], w))
    chosen = tuple(sorted(ranked[:vocab]))
    index = {w: i for i, w in enumerate(chosen)}
    doc_ids, word_ids = [], []
    for d, words in enumerate(docs):
        for w in words:
            if w in index:
                doc_ids.append(d)
                word_ids.append(index[w])
    return Corpus(np.asarray(doc_ids, np.int64), np.asarray(word_ids, np.int64), len(docs),
                  chosen)


def synthetic_corpus(docs: int = 400, doc_length: int = 100, topics: int = 10,
                     vocab: int = 500, alpha: float = 0.1, concentration: float = 0.05,
                     seed: int = 0) -> Corpus:
    """Documents drawn from known topics (seeded): each topic a Dirichlet(concentration)
    over `vocab` words, each document a Dirichlet(alpha) mixture of them."""
    if min(docs, doc_length, topics, vocab) < 1:
        raise ValueError("synthetic_corpus: every size must be >= 1")
    rng = np.random.default_rng(seed)
    phi = rng.dirichlet(np.full(vocab, concentration), topics)
    theta = rng.dirichlet(np.full(topics, alpha), docs)
    doc = np.repeat(np.arange(docs), doc_length)
    z = (theta.cumsum(1)[doc] < rng.random(len(doc))[:, None]).sum(1).clip(0, topics - 1)
    cum = phi.cumsum(1)
    word = np.empty(len(doc), np.int64)
    for k in range(topics):
        mine = np.flatnonzero(z == k)
        word[mine] = np.searchsorted(cum[k], rng.random(len(mine)) * cum[k, -1])
    return Corpus(doc, word.clip(0, vocab - 1), docs,
                  tuple(f"w{i}" for i in range(vocab)), phi)
