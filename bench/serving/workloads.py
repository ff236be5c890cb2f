"""The serving workloads: seeded, reproducible request schedules made of token ids.

Every prompt is a list of token ids built from a fixed word list (each word tokenized once, with
its leading space, by the server's tokenizer) and the ChatML markers, so prefixd and
llama-server receive exactly the same ids: no tokenizer or chat template of either server is
involved after the word table is made.

Three ways to drive a workload:
  open     -- Poisson arrivals: request i is sent at `at` seconds after the start, whatever the
              server is doing (W1, W3);
  sessions -- closed loop per session: turn t+1 is sent `think` seconds after turn t finished
              (W2);
  closed   -- C workers, each sending its next request as soon as its previous one finished (W4).
"""
import random
from dataclasses import dataclass, field

# 320 plain English words; the text they make is meaningless but tokenizes like prose.
WORDS = """
the of and to in is was for on that with as by at from his her they this are have be not
or an one had but all were when there can more if out so what about which would their will
up other into has time two some could then them these may first like only its over new also
after people made most any many where through back years much before good great well must
way even because our under work last year each three while still own state between city
world high day long life against around small part place house since never end against
point both same right number four family during left small water large night group week
often hand school area next light order river early court field power paper market story
table voice window garden letter summer winter morning evening bridge forest valley island
mountain ocean harbor station library museum theater kitchen village country journey season
engine signal circle pattern method record report answer reason result figure detail member
sample center corner middle surface distance weather history science music picture language
problem question example student teacher doctor worker farmer driver writer player reader
animal flower stone metal glass wood cotton silver copper iron salt sugar bread butter cheese
apple orange lemon tomato potato carrot onion pepper coffee honey rice grain wheat corn
quiet simple happy bright dark warm cold green yellow purple heavy light early late strong
gentle careful useful common special public private modern ancient local foreign central
build carry catch clean close count cover cross draw drive fill find follow gather grow hold
join keep learn listen lift measure move open paint pass plan play pull push reach read
remember repair return rise run save send share show sing sleep speak spend stand start stay
stop study teach test think travel turn visit wait walk wash watch write
""".split()


@dataclass
class Vocab:
    """Token ids of the word list and the chat markers (from the server's tokenizer)."""
    words: list            # list of lists of ids, one per word in WORDS order
    markers: dict          # "system"/"user"/"assistant": ids of "<|im_start|>ROLE\n";
                           # "end": ids of "<|im_end|>\n"

    def text(self, rng, n):
        """Exactly n token ids of random words."""
        out = []
        while len(out) < n:
            out += self.words[rng.randrange(len(self.words))]
        return out[:n]

    def turn(self, role, rng, n):
        return self.markers[role] + self.text(rng, n) + self.markers["end"]


@dataclass
class Request:
    rid: int
    tenant: str
    prompt: list
    n_predict: int
    at: float = 0.0        # open loop: send time in seconds from the start
    session: int = -1      # sessions: which session, turn index, think time before this turn
    turn: int = 0
    think: float = 0.0
    no_cache: bool = False


@dataclass
class Workload:
    key: str               # "w1".."w4"
    name: str
    mode: str              # "open", "sessions", "closed"
    requests: list
    tenants: list
    sizes: dict
    seed: int
    concurrency: int = 0   # closed loop
    session_starts: list = field(default_factory=list)
    prefixd_args: list = field(default_factory=list)
    warm: list = field(default_factory=list)  # sent one by one before the measured phase

    def prompt_tokens(self):
        return sum(len(r.prompt) for r in self.requests)


def _poisson(rng, n, rate):
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


def fanout(vocab, seed, tenants, sessions, sys_lo, sys_hi, user_lo, user_hi, n_predict, rate):
    """W1: `tenants` tenants, each with its own system prompt of sys_lo..sys_hi tokens;
    `sessions` sessions per tenant, each one short user turn; Poisson arrivals at `rate`/s."""
    rng = random.Random(seed)
    names = [f"t{k}" for k in range(tenants)]
    systems = {t: vocab.turn("system", rng, rng.randint(sys_lo, sys_hi)) for t in names}
    reqs = []
    for t in names:
        for _ in range(sessions):
            prompt = (systems[t] + vocab.turn("user", rng, rng.randint(user_lo, user_hi)) +
                      vocab.markers["assistant"])
            reqs.append(Request(0, t, prompt, n_predict))
    rng.shuffle(reqs)
    for i, (r, at) in enumerate(zip(reqs, _poisson(rng, len(reqs), rate))):
        r.rid, r.at = i, at
    # the warm phase: one session per tenant, one after the other, before the clock starts
    warm = [Request(len(reqs) + k, t, systems[t] + vocab.turn("user", rng, user_hi) +
                    vocab.markers["assistant"], n_predict) for k, t in enumerate(names)]
    sizes = dict(tenants=tenants, sessions_per_tenant=sessions, requests=len(reqs),
                 warm_requests=len(warm),
                 system_prompt_tokens={t: len(systems[t]) for t in names},
                 user_turn_tokens=[user_lo, user_hi], n_predict=n_predict,
                 arrival="poisson", rate_per_s=rate)
    return Workload("w1", "system-prompt fan-out", "open", reqs, names, sizes, seed, warm=warm)


def chat(vocab, seed, sessions, turns_lo, turns_hi, sys_tokens, user_lo, user_hi, reply_lo,
         reply_hi, n_predict, think_mean, start_spread):
    """W2: `sessions` chat sessions of turns_lo..turns_hi turns, all live at once. Turn t's
    prompt is the whole conversation so far: the app's system prompt (shared by every session),
    then each earlier user turn and a scripted assistant reply (seeded words, the same for both
    servers; the model's own output is not fed back, so both servers see identical prompts),
    then the new user turn. A session sends its next turn `think` seconds (exponential, seeded)
    after the previous one finished."""
    rng = random.Random(seed)
    system = vocab.turn("system", rng, sys_tokens)
    reqs, starts, rid = [], [], 0
    n_turns = []
    for s in range(sessions):
        starts.append(rng.uniform(0, start_spread))
        conv = list(system)
        t_n = rng.randint(turns_lo, turns_hi)
        n_turns.append(t_n)
        for t in range(t_n):
            conv += vocab.turn("user", rng, rng.randint(user_lo, user_hi))
            prompt = conv + vocab.markers["assistant"]
            think = rng.expovariate(1.0 / think_mean) if t else 0.0
            reqs.append(Request(rid, "app", prompt, n_predict, session=s, turn=t, think=think))
            rid += 1
            conv = prompt + vocab.text(rng, rng.randint(reply_lo, reply_hi)) + vocab.markers["end"]
    sizes = dict(sessions=sessions, turns=[turns_lo, turns_hi], total_turns=len(reqs),
                 system_prompt_tokens=len(system), user_turn_tokens=[user_lo, user_hi],
                 scripted_reply_tokens=[reply_lo, reply_hi], n_predict=n_predict,
                 think_mean_s=think_mean, start_spread_s=start_spread,
                 longest_prompt_tokens=max(len(r.prompt) for r in reqs))
    return Workload("w2", "multi-turn chat", "sessions", reqs, ["app"], sizes, seed,
                    session_starts=starts)


def pressure(vocab, seed, tenants, docs_per_tenant, doc_lo, doc_hi, q_lo, q_hi, n_predict,
             requests, rate, zipf_s, kv_cache_mb, host_cache_mb):
    """W3: tenants x docs_per_tenant distinct document prefixes (more than the first tier holds
    at --kv-cache-mb), each request one document (Zipf popularity) plus a short question."""
    rng = random.Random(seed)
    names = [f"t{k}" for k in range(tenants)]
    docs = [(t, vocab.turn("system", rng, rng.randint(doc_lo, doc_hi)))
            for t in names for _ in range(docs_per_tenant)]
    rng.shuffle(docs)
    weights = [1.0 / (i + 1) ** zipf_s for i in range(len(docs))]
    reqs = []
    for i, at in enumerate(_poisson(rng, requests, rate)):
        t, doc = rng.choices(docs, weights)[0]
        prompt = doc + vocab.turn("user", rng, rng.randint(q_lo, q_hi)) + vocab.markers["assistant"]
        reqs.append(Request(i, t, prompt, n_predict, at=at))
    total_doc = sum(len(d) for _, d in docs)
    sizes = dict(tenants=tenants, documents=len(docs), document_tokens=[doc_lo, doc_hi],
                 all_documents_tokens=total_doc, question_tokens=[q_lo, q_hi],
                 n_predict=n_predict, requests=requests, arrival="poisson", rate_per_s=rate,
                 zipf_s=zipf_s, prefixd_kv_cache_mb=kv_cache_mb,
                 prefixd_host_cache_mb=host_cache_mb)
    return Workload("w3", "capacity pressure", "open", reqs, names, sizes, seed,
                    prefixd_args=["--kv-cache-mb", str(kv_cache_mb)])


def unique(vocab, seed, requests, prompt_lo, prompt_hi, n_predict, concurrency, no_cache=False):
    """W4: every prompt unique from its first token (no two share even one token), closed loop
    with `concurrency` workers."""
    rng = random.Random(seed)
    firsts = [w for w in vocab.words if len(w) == 1]
    pairs = [(a[0], b[0]) for a in firsts for b in firsts]
    rng.shuffle(pairs)
    seen, reqs = set(), []
    for i in range(requests):
        while True:
            a, b = pairs.pop()
            if a not in seen:
                break
        seen.add(a)
        if len(seen) == len(firsts):
            seen.clear()  # more requests than first tokens: unique by the first two tokens
        prompt = [a, b] + vocab.text(rng, rng.randint(prompt_lo, prompt_hi) - 2)
        reqs.append(Request(i, "app", prompt, n_predict, no_cache=no_cache))
    sizes = dict(requests=requests, prompt_tokens=[prompt_lo, prompt_hi], n_predict=n_predict,
                 concurrency=concurrency, arrival="closed loop")
    return Workload("w4", "no reuse", "closed", reqs, ["app"], sizes, seed, concurrency=concurrency)


def ideal_shared(sent):
    """The ideal cached tokens of each prompt: its longest common prefix with any prompt of the
    same tenant sent before it, at most len - 1 (the last prompt token is always computed, to
    produce the first output's logits). `sent` is [(tenant, prompt)] in send order."""
    tries, out = {}, []
    for tenant, prompt in sent:
        node = tries.setdefault(tenant, {})
        depth = 0
        while depth < len(prompt) and prompt[depth] in node:
            node = node[prompt[depth]]
            depth += 1
        out.append(min(depth, len(prompt) - 1))
        for tok in prompt[depth:]:
            node = node.setdefault(tok, {})
    return out
