"""Bounded load against an OpenAI-compatible server with the ``openai`` async client, plus a /metrics scraper.

Closed loop: ``concurrency`` workers share ``requests`` requests. Open loop: Poisson arrivals at ``rate`` requests/s
(seeded), ``requests`` in all. Every request ends as completed or failed (with the error text); nothing is dropped.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from ghost_vllm.loadtest.promtext import metric_sum, parse_metrics

__all__ = ["RequestSample", "MetricsPeaks", "scrape", "run_level"]


@dataclass
class RequestSample:
    index: int
    ok: bool
    start_s: float
    e2e_s: float
    ttft_s: Optional[float]
    itl_s: list[float]
    output_tokens: int
    error: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MetricsPeaks:
    running_max: float = 0.0
    waiting_max: float = 0.0
    scrapes: int = 0
    failures: int = 0
    last_error: Optional[str] = None
    series: list[tuple[float, float, float]] = field(default_factory=list)  # (t, running, waiting)


async def scrape(http, base_url: str) -> list:
    r = await http.get(f"{base_url}/metrics", timeout=10)
    r.raise_for_status()
    return parse_metrics(r.text)


def _scraper(base_url: str, peaks: MetricsPeaks, stop: threading.Event, t0: float, interval: float) -> None:
    """Runs in its own thread so the clients' event loop cannot starve it.

    Scrapes once before looking at ``stop``: a level shorter than the thread's start-up still gets a sample.
    """
    import httpx

    with httpx.Client(timeout=10) as http:
        while True:
            try:
                r = http.get(f"{base_url}/metrics")
                r.raise_for_status()
                s = parse_metrics(r.text)
                running = metric_sum(s, "vllm:num_requests_running")
                waiting = metric_sum(s, "vllm:num_requests_waiting")
                peaks.running_max = max(peaks.running_max, running)
                peaks.waiting_max = max(peaks.waiting_max, waiting)
                peaks.series.append((time.perf_counter() - t0, running, waiting))
                peaks.scrapes += 1
            except Exception as e:  # counted and kept: a level without a single scrape says why
                peaks.failures += 1
                peaks.last_error = f"{type(e).__name__}: {str(e)[:200]}"
            if stop.wait(interval):
                break


async def _one(client, model: str, prompt: list[int], max_tokens: int, index: int, t0: float,
               timeout_s: float) -> RequestSample:
    start = time.perf_counter()
    times: list[float] = []
    tokens = 0
    try:
        async with asyncio.timeout(timeout_s):
            stream = await client.completions.create(
                model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    times.append(time.perf_counter())
                if getattr(chunk, "usage", None) is not None:
                    tokens = int(chunk.usage.completion_tokens)
    except Exception as e:  # every failure is recorded with what the client saw
        return RequestSample(index, False, start - t0, time.perf_counter() - start, None, [], tokens,
                             f"{type(e).__name__}: {str(e)[:200]}")
    end = time.perf_counter()
    ttft = times[0] - start if times else None
    itl = [b - a for a, b in zip(times, times[1:])]
    return RequestSample(index, True, start - t0, end - start, ttft, itl, tokens)


async def run_level(base_url: str, model: str, prompts: list[list[int]], max_tokens: int, concurrency: int,
                    rate: Optional[float] = None, seed: int = 0, request_timeout_s: float = 600.0,
                    scrape_interval_s: float = 0.5, on_done=None) -> tuple[list[RequestSample], MetricsPeaks, dict]:
    """Send ``len(prompts)`` requests; return samples, /metrics peaks and counter deltas over the level."""
    import httpx
    import openai

    peaks = MetricsPeaks()
    async with httpx.AsyncClient() as http:
        before = await scrape(http, base_url)
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0,
                                    timeout=request_timeout_s, http_client=httpx.AsyncClient(limits=httpx.Limits(
                                        max_connections=max(concurrency, 1) + 8,
                                        # a fresh connection per request: reusing one the server is closing after
                                        # a finished stream fails the next request with "Connection error" before
                                        # it reaches the server (seen under load on 2 cores); a loopback connect
                                        # costs far less than a generated token
                                        max_keepalive_connections=0)))
        t0 = time.perf_counter()
        stop = threading.Event()
        scraper = threading.Thread(target=_scraper, args=(base_url, peaks, stop, t0, scrape_interval_s), daemon=True)
        scraper.start()
        samples: list[RequestSample] = []

        async def tracked(i: int) -> None:
            s = await _one(client, model, prompts[i], max_tokens, i, t0, request_timeout_s)
            samples.append(s)
            if on_done is not None:
                on_done(s)

        if rate is None:
            queue = list(range(len(prompts)))

            async def worker() -> None:
                while queue:
                    await tracked(queue.pop(0))

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompts)))))
        else:
            rng = random.Random(seed)
            tasks = []
            for i in range(len(prompts)):
                tasks.append(asyncio.create_task(tracked(i)))
                await asyncio.sleep(rng.expovariate(rate))
            await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
        stop.set()
        scraper.join(timeout=30)
        await client.close()
        after = await _settled(http, base_url, before, sum(s.output_tokens for s in samples))
    deltas = {
        "duration_s": duration,
        "generation_tokens_delta": metric_sum(after, "vllm:generation_tokens_total")
        - metric_sum(before, "vllm:generation_tokens_total"),
        "preemptions_delta": metric_sum(after, "vllm:num_preemptions_total") - metric_sum(before, "vllm:num_preemptions_total"),
        "request_success_delta": metric_sum(after, "vllm:request_success_total")
        - metric_sum(before, "vllm:request_success_total"),
    }
    samples.sort(key=lambda s: s.index)
    return samples, peaks, deltas


async def _settled(http, base_url: str, before: list, expected_tokens: int, wait_s: float = 5.0) -> list:
    """Scrape until the server's generation counter stops moving (its stats trail the last response slightly)."""
    deadline = time.perf_counter() + wait_s
    last = await scrape(http, base_url)
    while time.perf_counter() < deadline:
        delta = metric_sum(last, "vllm:generation_tokens_total") - metric_sum(before, "vllm:generation_tokens_total")
        if delta >= expected_tokens:
            break
        await asyncio.sleep(0.2)
        last = await scrape(http, base_url)
    return last
