"""Regenerate the README's screenshot of the review page: a sample session (no network), the page served
by `chatproxy review`'s server code, headless Chromium (tests/review/cdp.py) taking PNGs.

    python scripts/review_screenshot.py scripts/review-page.png [--transcript PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "review"))

from cdp import CHROMIUM, Browser  # noqa: E402
from review_sessions import PNG, bot, record, user, write_session  # noqa: E402

from chatproxy.review.app import ReviewApp, start_review_server  # noqa: E402
from chatproxy.review.catalogue import Catalogue  # noqa: E402


def sample_records(session: str) -> List[Dict[str, Any]]:
    import hashlib

    image = f"{session}/images/{hashlib.sha256(PNG).hexdigest()}.png"
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Lisbon"}'}
    return [
        record(
            "c000000000000001",
            [
                {"role": "system", "content": "You are a concise assistant."},
                user("Explain what a context window is, in two sentences."),
                bot(
                    "A context window is the amount of text a model can read at once. "
                    "Anything beyond it is cut off or must be summarised."
                ),
            ],
            "2026-05-04T08:12:00.000Z",
            usage={"total_tokens": 61},
        ),
        record(
            "c000000000000002",
            [
                user("What's the weather in Lisbon?"),
                bot("", tool_calls=[call]),
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21, "sky": "clear"}'},
                bot("It is 21 °C and clear in Lisbon."),
            ],
            "2026-05-04T09:30:00.000Z",
            model="gpt-4o-mini",
            tags=["agent"],
        ),
        record(
            "c000000000000003",
            [
                user("Is 1001 prime?"),
                bot("No: 1001 = 7 × 11 × 13.", reasoning="Try small primes: 7 × 143 = 1001, 143 = 11 × 13."),
            ],
            "2026-05-05T14:02:00.000Z",
            model="deepseek-r1",
        ),
        record(
            "c000000000000004",
            [user("write a haiku about rain"), bot("Rain on the window")],
            "2026-05-05T16:40:00.000Z",
            model="llama-3",
        ),
        record(
            "c000000000000005",
            [bot("Grey sky, soft drumming")],
            "2026-05-05T16:41:00.000Z",
            "c000000000000004",
            1,
            model="llama-3",
        ),
        record(
            "c000000000000006",
            [user("What is in this picture?\n<image>", images=[image]), bot("A single grey pixel.")],
            "2026-05-06T10:05:00.000Z",
            tags=["vision"],
        ),
        record(
            "c000000000000007",
            [user("Translate 'good morning' to Portuguese."), bot("Bom dia.")],
            "2026-05-06T11:20:00.000Z",
            model="claude-sonnet-4",
            endpoint="/v1/messages",
        ),
    ]


def make_sample(root: Path) -> Path:
    folder = root / "datasets"
    write_session(folder, "sample", sample_records("sample"))
    import hashlib

    images = folder / "sample" / "images"
    images.mkdir(parents=True)
    (images / f"{hashlib.sha256(PNG).hexdigest()}.png").write_bytes(PNG)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG of the list with a transcript open")
    parser.add_argument("--transcript", type=Path, help="also a PNG of the transcript pane alone")
    parser.add_argument("--list", type=Path, help="also a PNG of the list with nothing open")
    args = parser.parse_args()
    if CHROMIUM is None:
        print("no chromium on PATH", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_sample(Path(tmp))
        app = ReviewApp(Catalogue(folder))
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        server, (_, port) = asyncio.run_coroutine_threadsafe(start_review_server(app, "127.0.0.1", 0), loop).result(10)
        browser = Browser(Path(tmp) / "profile", 1500, 760)
        try:
            base = f"http://127.0.0.1:{port}/_chatproxy/review/"
            browser.open(base)
            browser.wait("document.querySelectorAll('#rows li').length === 7")
            if args.list:
                browser.screenshot(args.list)
            browser.open(base + "#sample/c000000000000002")
            browser.wait("document.getElementById('transcript').textContent.includes('21 °C')")
            browser.js("window.scrollTo(0, 0)")
            browser.screenshot(args.out)
            if args.transcript:
                rect = browser.js("JSON.stringify(document.getElementById('detail-pane').getBoundingClientRect())")
                import json

                box = json.loads(rect)
                clip = {"x": box["x"], "y": box["y"], "width": box["width"], "height": box["height"], "scale": 1}
                import base64

                data = browser.call("Page.captureScreenshot", format="png", clip=clip)["data"]
                args.transcript.write_bytes(base64.b64decode(data))
        finally:
            browser.close()
            asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            app.catalogue.close()
    for path in (args.out, args.list, args.transcript):
        if path:
            print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
