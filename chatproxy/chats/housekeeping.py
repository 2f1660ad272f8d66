"""Recognise the housekeeping calls chat frontends make beside a conversation.

Open WebUI, LibreChat, SillyTavern, LobeChat, NextChat, Chatbox and HuggingFace chat-ui ask the model for
titles, tags, follow-up suggestions, search queries, summaries and the like through the same endpoint as the
chat itself. Those exchanges are not conversations, and recording them would fill the dataset with copies
of the frontends' own prompts. `housekeeping_kind` names the task ("title", "tags", ...) or returns None.

Each frontend sends its task instruction as fixed text, so a marker is a distinctive phrase of that text as
the frontend ships it by default. Open WebUI rewrites its templates' wording between releases, so its task
prompts are also recognised by their stable structure (`_task_kind`: the "### Task:" head, the
<chat_history> wrapper, the JSON-only answer and its key), and so are LibreChat's (`_librechat_kind`: how
it quotes the exchange a title is for, its summaries' labels). A template the user has rewritten beyond
that structure is not recognised.
Markers are looked for in the places the frontends put them: the last user message (most task prompts),
the final message whatever its role (SillyTavern's quiet prompts and NextChat's summary request are system
messages appended after the chat), and the system messages (LibreChat, LobeChat, chat-ui and Open WebUI's
tool selection put the instruction there). Earlier turns are never looked at, so a chat that once quoted
such a prompt is still recorded. Text is compared case-insensitively with its whitespace collapsed and
typographic quotes straightened, because the templates are filled in with newlines and quotes that vary.
Of a long message only the head and the tail are searched, where the instructions sit.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Dict, List, Optional, Tuple


def housekeeping_kind(messages: list[dict[str, Any]]) -> str | None:
    """The kind of frontend task these canonical messages carry, or None for an ordinary chat."""
    probes = [_PROBED.kinds(content) for content in _probes(messages)]
    for marked, _ in probes:
        if marked is not None:
            return marked
    for _, structured in probes:
        if structured is not None:
            return structured
    return None


def _kinds(content: object) -> Tuple[Optional[str], Optional[str]]:
    """What one probed message says: the kind its markers name, and the kind its structure shows."""
    text = _normalise(content)
    return _marked_kind(text), _task_kind(text) or _librechat_kind(text)


def _marked_kind(text: str) -> str | None:
    # A match starts with its marker's leading text: where none of those occurs, no marker can match.
    for lead in _LEADS:
        if lead in text:
            break
    else:
        return None
    # One search finds where the first marker starts; of the markers that match there, the kind first in
    # order of name is taken, as the minimum of (start, kind) over every marker's own search would.
    first = _any_marker().search(text)
    if first is None:
        return None
    at = first.start()
    return min(kind for kind, pattern in _MARKERS if pattern.match(text, at))


class ProbeCache:
    """The kinds of the texts probed last, by their text: a chat's system prompt, and the task prompts a
    frontend sends word for word, come again and again. Forgotten all at once past LIMIT characters."""

    LIMIT = 1 << 20

    def __init__(self) -> None:
        self._kinds: Dict[str, Tuple[Optional[str], Optional[str]]] = {}
        self._chars = 0

    def kinds(self, content: object) -> Tuple[Optional[str], Optional[str]]:
        if not isinstance(content, str):
            return _kinds(content)
        kinds = self._kinds.get(content)
        if kinds is None:
            kinds = _kinds(content)
            if self._chars + len(content) > self.LIMIT:
                self._kinds.clear()
                self._chars = 0
            self._kinds[content] = kinds
            self._chars += len(content)
        return kinds


# Open WebUI's task templates (backend/open_webui/config.py DEFAULT_*_PROMPT_TEMPLATE) change their wording
# from release to release; their structure has not changed since 0.5: a "### Task:" head, the chat quoted in
# a <chat_history> wrapper, and an answer asked for as JSON only, whose key the backend then reads (so it
# cannot change without changing the code that parses it). The key names the task.
_TASK_HEAD = "### task:"
_JSON_KEY = re.compile(r'json[^{]{0,80}\{ ?"(\w+)"')
_TASK_KEYS = {
    "title": "title",
    "tags": "tags",
    "follow_ups": "follow-ups",
    "queries": "search-query",
    "prompt": "image-prompt",
    "text": "autocomplete",
}


def _task_kind(text: str) -> str | None:
    if not text.startswith(_TASK_HEAD) or "<chat_history>" not in text or "</chat_history>" not in text:
        return None
    head = text[: text.index("<chat_history>")]
    if "json" not in head:
        return None
    match = _JSON_KEY.search(head)
    return _TASK_KEYS.get(match.group(1), "task") if match else "task"


# LibreChat lets its admin reword the title prompt (librechat.yaml `titlePrompt`), and its task prompts have
# changed from release to release, but the parts its code depends on have not: the exchange a title is asked
# for is quoted as `||>User:\n"…"\n||>Response:\n"…"` by its clients (2023 to now) and as "User: …\nAI: …"
# by @librechat/agents (`titlePromptTemplate`'s default); its summaries fill "Current summary:" / "New
# lines:" / "New summary:" (summaryPrompts.js) or ask for a "checkpoint" and nothing else (the agents'
# context compaction, 3.1+); its activity and reasoning labels end their rules with "Output only the label
# (title, summary) — no quotes" (3.2+).
_LABEL_RULE = re.compile(r"output only the (?:label|title|summary) \u2014 no quotes")


def _librechat_kind(text: str) -> str | None:
    if "||>response:" in text and ("||>user:" in text or "||>message:" in text):
        return "title"
    exchange = _agents_exchange(text)
    if exchange and " ai: " in text[exchange[1] :] and "title" in text[: exchange[0]]:
        return "title"
    if "current summary:" in text and "new summary:" in text[-300:]:
        return "summary"
    if "the following text is cut-off:" in text and text.endswith("summary:"):
        return "summary"
    if "checkpoint" in text and "don't respond to me or continue the conversation" in text:
        return "summary"
    return "label" if _LABEL_RULE.search(text) else None


def _agents_exchange(text: str) -> Optional[Tuple[int, int]]:
    """Where the regular expression `(?:^| )user: ` first matches (start, end), or None: str.find is many
    times faster than a pattern that begins with an alternative."""
    if text.startswith("user: "):
        return 0, 6
    at = text.find(" user: ")
    return None if at < 0 else (at, at + 7)


def _probes(messages: list[dict[str, Any]]) -> List[object]:
    """The contents to search: the last user message, the final message, then every system message."""
    chosen: List[dict[str, Any]] = []
    users = [message for message in messages if isinstance(message, dict) and message.get("role") == "user"]
    if users:
        chosen.append(users[-1])
    if messages and isinstance(messages[-1], dict):
        chosen.append(messages[-1])
    chosen.extend(message for message in messages if isinstance(message, dict) and message.get("role") == "system")
    texts, seen = [], set()
    for message in chosen:
        if id(message) not in seen:
            seen.add(id(message))
            texts.append(message.get("content"))
    return texts


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})

# Frontends put the instruction at the start of the message that carries it (after a tool list at most) or
# at its end (after the chat it summarises), so only those windows are searched: some thirty patterns over a
# pasted book would otherwise hold the event loop for a noticeable fraction of a second.
_HEAD_CHARS = 32 * 1024
_TAIL_CHARS = 8 * 1024


def _normalise(content: object) -> str:
    if not isinstance(content, str):
        return ""
    if len(content) > _HEAD_CHARS + _TAIL_CHARS:
        content = content[:_HEAD_CHARS] + "\n" + content[-_TAIL_CHARS:]
    if not content.isascii():  # the typographic quotes are not: ASCII text has none to straighten
        content = content.translate(_QUOTES)
    return " ".join(content.lower().split())


def _marker(kind: str, phrase: str) -> Tuple[str, re.Pattern[str]]:
    # Phrases are written in lower case with single spaces, matching the normalised text. Matching the
    # lowered text case-sensitively lets re skip ahead to the literal start of each phrase: 10-15 times
    # faster on long messages than re.IGNORECASE, which checks every position.
    assert phrase == phrase.lower(), phrase
    return kind, re.compile(phrase)


# Ordered by frontend; each marker names its source (repository and file) as of the versions read.
_MARKERS = (
    # --- Open WebUI: backend/open_webui/config.py DEFAULT_*_PROMPT_TEMPLATE, older releases where noted.
    # Title, current: "### Task:\nGenerate a concise title summarizing the chat history."; 0.5-0.6 "...a
    # concise, 3-5 word title with an emoji summarizing the chat history."; the notes editor
    # (src/lib/components/notes/NoteEditor.svelte) "...summarizing the content in the content's ...".
    _marker(
        "title",
        r"generate a concise(?:, \d-\d word)? title (?:with an emoji )?summarizing the (?:chat history|content)",
    ),
    # 0.3-0.4: "Create a concise, 3-5 word title with an emoji as a title for the chat history" (or "prompt").
    _marker("title", r"create a concise, 3-5 word title with an emoji as a title for the (?:chat history|prompt)"),
    # The ollama-webui era, src/lib/apis/ollama/index.ts generateTitle, and its i18n default.
    _marker("title", r"create a concise, 3-5 word phrase as a header for the following query"),
    _marker("tags", r"generate 1-3 broad tags categorizing the main themes of the chat history"),
    _marker("follow-ups", r"suggest 3-5 relevant follow-up questions or prompts that the user might naturally ask"),
    # Web search and retrieval queries share DEFAULT_QUERY_GENERATION_PROMPT_TEMPLATE.
    _marker("search-query", r"analyze the chat history to determine the necessity of generating search queries"),
    # 0.3 SEARCH_QUERY_GENERATION_PROMPT_TEMPLATE, as open-webui/docs' environment reference quoted it.
    _marker("search-query", r"assess the need for a web search based on the current question and prior"),
    # 0.2; huggingface/chat-ui src/lib/server/websearch/generateQuery.ts sends the same text as its system.
    _marker("search-query", r"you are tasked with generating web search queries\. give me an appropriate query"),
    _marker("autocomplete", r"### task: you are an autocompletion system\."),
    _marker("emoji", r"your task is to reflect the speaker's likely facial expression through a fitting emoji"),
    # "for am image" is the template's own typo; the corrected spelling is accepted too.
    _marker("image-prompt", r"generate a detailed prompt for a[mn] image generation task"),
    # Tool choice: DEFAULT_TOOLS_FUNCTION_CALLING_PROMPT_TEMPLATE (a system message), then 0.3's wording.
    _marker("tool-selection", r"your task is to choose and return the correct tool\(s\) from the list of available"),
    _marker("tool-selection", r"return an empty string if no tools match the query\. if a function tool matches"),
    # "Merge Responses" of several models' answers: DEFAULT_MOA_GENERATION_PROMPT_TEMPLATE (0.3 to 0.12),
    # the opening sentence and the "Responses from models:" label its {{responses}} follow.
    _marker("merge-responses", r"you have been provided with a set of responses from various models to the latest"),
    _marker("merge-responses", r"your task is to synthesize these responses into a single, high-quality response"),
    # --- LibreChat (`_librechat_kind` reads their structure). danny-avila/agents src/utils/title.ts
    # defaultCompletionPrompt ("Provide a concise, 5-word-or-less title for the conversation, ...") and
    # LibreChat api/app/clients/prompts/titlePrompts.js titleInstruction, sent as "Please generate a concise,
    # 5-word-or-less title for the conversation, ...".
    _marker("title", r"a concise, 5-word-or-less title for the conversation"),
    # danny-avila/agents src/utils/title.ts defaultTitlePrompt (title and language as structured output).
    _marker("title", r"analyze this conversation and provide: 1\. the detected language of the conversation"),
    # titlePrompts.js createTitlePrompt ("given language"); older agents releases ("detected language").
    _marker("title", r"write a concise title for this conversation in the (?:given|detected) language"),
    # api/app/titleConvo.js, later the fallback in api/app/clients/OpenAIClient.js titleConvo.
    _marker("title", r"detect user language and write in the same language an extremely concise title"),
    # --- SillyTavern. public/scripts/extensions/memory/index.js defaultPrompt: "Ignore previous
    # instructions. Summarize the most important facts and events in the story so far. ...", earlier "[Pause
    # your roleplay. Summarize the most important facts and events that have happened in the chat so far. ..."
    _marker("summary", r"summarize the most important facts and events (?:in the story|that have happened)"),
    # public/scripts/extensions/expressions/index.js DEFAULT_LLM_PROMPT.
    _marker("expression", r"classify the emotion of the last message\. output just one word"),
    # public/scripts/extensions/stable-diffusion/index.js promptTemplates (character, face, scene... modes).
    _marker("image-prompt", r"provide only a detailed comma-delimited list of keywords and phrases which describe"),
    # --- LobeChat (lobehub/lobe-chat): packages/prompts/src/chains/*.ts, mostly system messages.
    _marker("title", r"you are a professional conversation summarizer\. generate a concise title"),  # summaryTitle.ts
    _marker("title", r"你需要将用户的会话总结为 ?10 ?个字以内的标题"),  # src/prompts/chat.ts, before the chains
    _marker("tags", r"你是一名擅长会话标签总结的助理"),  # summaryTags.ts
    _marker("emoji", r"you are an emoji expert who selects the most appropriate emoji"),  # pickEmoji.ts
    # summaryHistory.ts, the request after the history.
    _marker("summary", r"please summarize the above conversation and retain key information\."),
    # rewriteQuery.ts DEFAULT_REWRITE_QUERY, itself LangChain's condense-question prompt.
    _marker(
        "search-query",
        r"given the following conversation and a follow[ -]up question, rephrase the follow[ -]up question",
    ),
    # --- NextChat: ChatGPTNextWeb/NextChat app/locales/en.ts Store.Prompt.Topic and .Summarize.
    _marker("title", r"please generate a four to five word title summarizing our conversation"),
    _marker("summary", r"summarize the discussion briefly in 200 words or less to use as a prompt for future"),
    # --- Chatbox: src/renderer/packages/prompts.ts nameConversation in chatboxai/chatbox, then Bin-Huang/chatbox.
    _marker("title", r"based on the chat history, give this conversation a name\."),
    _marker("title", r"name the conversation based on the chat records\."),
    # --- HuggingFace chat-ui: src/lib/server/textGeneration/title.ts (system message).
    _marker("title", r"you are a summarization ai\. you'll never answer a user's question directly"),
)


@functools.cache
def _any_marker() -> re.Pattern[str]:
    """Every marker in one pattern: compiled on first use, not while the recorder starts (it takes ms)."""
    return re.compile("|".join(f"(?:{pattern.pattern})" for _, pattern in _MARKERS))


def _lead(pattern: str) -> str:
    """The literal text every match of `pattern` starts with: up to its first special character, less the
    character a quantifier makes optional."""
    lead = ""
    for char in pattern:
        if char in "\\.^$*+?{}[]|()":
            return lead[:-1] if char in "*+?{" else lead
        lead += char
    return lead


# The first characters of each: short needles are the fastest to look for.
_LEADS = tuple(dict.fromkeys(_lead(pattern.pattern)[:8] for _, pattern in _MARKERS))
assert all(_LEADS), "every marker starts with literal text"
_PROBED = ProbeCache()
