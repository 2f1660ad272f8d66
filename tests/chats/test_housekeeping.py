"""housekeeping_kind: frontend task requests as the frontends send them, and ordinary chats that are not.

Every request below is the frontend's default template with its placeholders filled in the way that
frontend fills them (Open WebUI renders {{MESSAGES:END:n}} as "USER: ...\\nASSISTANT: ..." lines and
{{CURRENT_DATE}} as YYYY-MM-DD; SillyTavern substitutes {{words}} and {{labels}}; LibreChat and LobeChat
format the conversation as "User:/AI:" or "role: content" lines), in the message roles the frontend uses.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import pytest

from chatproxy.apis.templates import parse_prompt
from chatproxy.chats.housekeeping import housekeeping_kind


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


class Case(NamedTuple):
    name: str
    messages: List[dict]
    kind: Optional[str]


OWUI_HISTORY = (
    "USER: What is the best way to learn Rust?\n"
    "ASSISTANT: Start with The Rust Programming Language book, then build small CLI tools."
)

OWUI_TITLE = f"""### Task:
Generate a concise title summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
- Keep it short: 2-4 words is best.
- Do not use emojis, quotation marks, or special formatting.
- Write the title in the chat's primary language; default to English if multilingual.
- Prioritize accuracy over creativity.
- Your entire response must consist solely of the JSON object, without any introductory or concluding text.
- The output must be a single, raw JSON object, without any markdown code fences or other encapsulating text.
- Ensure no conversational text, affirmations, or explanations precede or follow the raw JSON output, as this will cause direct parsing failure.
### Output:
JSON format: {{ "title": "your concise title here" }}
### Examples:
- {{ "title": "Stock Trends" }},
- {{ "title": "Chocolate Chip Cookies" }},
- {{ "title": "Music Streaming" }},
- {{ "title": "Remote Work" }}
### Chat History:
<chat_history>
{OWUI_HISTORY}
</chat_history>"""  # noqa: E501

OWUI_TITLE_EMOJI = f"""### Task:
Generate a concise, 3-5 word title with an emoji summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
- Use emojis that enhance understanding of the topic, but avoid quotation marks or special formatting.
- Write the title in the chat's primary language; default to English if multilingual.
- Prioritize accuracy over excessive creativity; keep it clear and simple.
### Output:
JSON format: {{ "title": "your concise title here" }}
### Examples:
- {{ "title": "📉 Stock Market Trends" }},
- {{ "title": "🍪 Perfect Chocolate Chip Recipe" }},
- {{ "title": "Evolution of Music Streaming" }}
### Chat History:
<chat_history>
{OWUI_HISTORY}
</chat_history>"""

OWUI_TITLE_03 = """Create a concise, 3-5 word title with an emoji as a title for the prompt in the given language. \
Suitable Emojis for the summary can be used to enhance understanding but avoid quotation marks or special \
formatting. RESPOND ONLY WITH THE TITLE TEXT.

Examples of titles:
📉 Stock Market Trends
🍪 Perfect Chocolate Chip Recipe
Evolution of Music Streaming
Remote Work Productivity Tips
Artificial Intelligence in Healthcare
🎮 Video Game Development Insights

Prompt: What is the best way to learn Rust?"""

OWUI_TAGS = f"""### Task:
Generate 1-3 broad tags categorizing the main themes of the chat history, along with 1-3 more specific subtopic tags.

### Guidelines:
- Start with high-level domains (e.g. Science, Technology, Philosophy, Arts, Politics, Business, Health, Sports, Entertainment, Education)
- Consider including relevant subfields/subdomains if they are strongly represented throughout the conversation
- If content is too short (less than 3 messages) or too diverse, use only ["General"]
- Use the chat's primary language; default to English if multilingual
- Prioritize accuracy over specificity

### Output:
JSON format: {{ "tags": ["tag1", "tag2", "tag3"] }}

### Chat History:
<chat_history>
{OWUI_HISTORY}
</chat_history>"""  # noqa: E501

OWUI_FOLLOW_UPS = f"""### Task:
Suggest 3-5 relevant follow-up questions or prompts that the user might naturally ask next in this conversation as a **user**, based on the chat history, to help continue or deepen the discussion.
### Guidelines:
- Write all follow-up questions from the user’s point of view, directed to the assistant.
- Make questions concise, clear, and directly related to the discussed topic(s).
### Output:
JSON format: {{ "follow_ups": ["Question 1?", "Question 2?", "Question 3?"] }}
### Chat History:
<chat_history>
{OWUI_HISTORY}
</chat_history>"""  # noqa: E501

OWUI_QUERIES = f"""### Task:
Analyze the chat history to determine the necessity of generating search queries, in the given language. By default, **prioritize generating 1-3 broad and relevant search queries** unless it is absolutely certain that no additional information is required. The aim is to retrieve comprehensive, updated, and valuable information even with minimal uncertainty. If no search is unequivocally needed, return an empty list.

### Guidelines:
- Respond **EXCLUSIVELY** with a JSON object. Any form of extra commentary, explanation, or additional text is strictly prohibited.
- Today's date is: 2025-01-15.

### Output:
Strictly return in JSON format: 
{{
  "queries": ["query1", "query2"]
}}

### Chat History:
<chat_history>
{OWUI_HISTORY}
</chat_history>
"""  # noqa: E501, W291

OWUI_AUTOCOMPLETE = f"""### Task:
You are an autocompletion system. Continue the text in `<text>` based on the **completion type** in `<type>` and the given language.  

### **Output Rules**:
- Respond only in JSON format: `{{ "text": "<your_completion>" }}`.

---
### Context:
<chat_history>
{OWUI_HISTORY}
</chat_history>
<type>search query</type>  
<text>best rust books for</text>  
#### Output:
"""  # noqa: E501, W291

OWUI_EMOJI = """Your task is to reflect the speaker's likely facial expression through a fitting emoji. Interpret \
emotions from the message and reflect their facial expression using fitting, diverse emojis (e.g., 😊, 😢, 😡, 😱).

Message: ```I finally passed my driving test!```"""

OWUI_IMAGE = """### Task:
Generate a detailed prompt for am image generation task based on the given language and context. Describe the image as if you were explaining it to someone who cannot see it. Include relevant details, colors, shapes, and any other important elements.

### Output:
Strictly return in JSON format:
{
    "prompt": "Your detailed description here."
}

### Chat History:
<chat_history>
USER: Draw a lighthouse at dusk
</chat_history>"""  # noqa: E501

OWUI_TOOLS = """Available Tools: [{"name": "get_weather", "description": "Current weather for a city"}]

Your task is to choose and return the correct tool(s) from the list of available tools based on the query. \
Follow these guidelines:

- Return only the JSON object, without any additional text or explanation."""

LIBRECHAT_CONVO = "User: How do I make sourdough starter?\nAI: Mix equal parts flour and water and feed it daily."

LIBRECHAT_TITLE_INSTRUCTION = (
    "a concise, 5-word-or-less title for the conversation, using its same language, with no punctuation. Apply "
    "title case conventions appropriate for the language. Never directly mention the language name or the word "
    '"title".Start the title with one emoji that fits the topic (REQUIRED), The emoji should help communicate '
    "the subject"
)

ST_CHAT = [
    system("Write Seraphina's next reply in a fictional chat between Seraphina and Anon."),
    bot("*You wake up in a glade.* Are you alright?"),
    user("Where am I?"),
    bot("In my glade, safe from the beasts."),
    user("Thank you."),
]

NEXTCHAT_CHAT = [
    system("You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2023-10"),
    user("How do I centre a div?"),
    bot("Use flexbox: display: flex; justify-content: center; align-items: center."),
]

CASES = [
    # --- Open WebUI
    Case("open webui title", [user(OWUI_TITLE)], "title"),
    Case("open webui title with emoji (0.5-0.6)", [user(OWUI_TITLE_EMOJI)], "title"),
    Case("open webui title (0.3)", [user(OWUI_TITLE_03)], "title"),
    Case(
        "ollama webui header title",
        [
            user(
                "Create a concise, 3-5 word phrase as a header for the following query, strictly adhering to the "
                "3-5 word limit and avoiding the use of the word 'title': What is the best way to learn Rust?"
            )
        ],
        "title",
    ),
    Case("open webui tags", [user(OWUI_TAGS)], "tags"),
    Case("open webui follow-ups", [user(OWUI_FOLLOW_UPS)], "follow-ups"),
    Case("open webui search queries", [user(OWUI_QUERIES)], "search-query"),
    Case(
        "open webui search query (0.3)",
        [
            user(
                "Assess the need for a web search based on the current question and prior interactions, but lean "
                "towards suggesting a Google search query if uncertain. Today's date is 2024-07-01.\n\n"
                "Current Question:\nbest rust books\n\nInteraction History:\nUSER: best rust books"
            )
        ],
        "search-query",
    ),
    Case("open webui autocomplete", [user(OWUI_AUTOCOMPLETE)], "autocomplete"),
    Case("open webui emoji", [user(OWUI_EMOJI)], "emoji"),
    Case("open webui image prompt", [user(OWUI_IMAGE)], "image-prompt"),
    Case("open webui tool selection", [system(OWUI_TOOLS), user("Query: weather in Paris?")], "tool-selection"),
    Case(
        "open webui tool selection (0.3)",
        [
            system(
                'Available Tools: [{"name": "get_weather"}]\nReturn an empty string if no tools match the query. '
                'If a function tool matches, construct and return a JSON object in the format {"name": '
                '"functionName", "parameters": {"requiredFunctionParamKey": "requiredFunctionParamValue"}} using '
                "the appropriate tool and its parameters. Only return the object and limit the response to the "
                "JSON object without additional text."
            ),
            user("Query: weather in Paris?"),
        ],
        "tool-selection",
    ),
    Case(
        "open webui with the model's own system prompt first",
        [system("You are a friendly assistant."), user(OWUI_TAGS)],
        "tags",
    ),
    # --- LibreChat
    Case(
        "librechat agents completion title",
        [
            user(
                "Provide a concise, 5-word-or-less title for the conversation, using its same language, with no "
                "punctuation. Apply title case conventions appropriate for the language. Never directly mention "
                'the language name or the word "title" and only return the title itself.\n\nConversation:\n'
                + LIBRECHAT_CONVO
            )
        ],
        "title",
    ),
    Case(
        "librechat agents structured title",
        [
            user(
                "Analyze this conversation and provide:\n1. The detected language of the conversation\n"
                "2. A concise title in the detected language (5 words or less, no punctuation or quotation)\n\n"
                + LIBRECHAT_CONVO
            )
        ],
        "title",
    ),
    Case(
        "librechat openai client title (system message only)",
        [
            system(
                f'Please generate {LIBRECHAT_TITLE_INSTRUCTION}\n\n||>User:\n"How do I make sourdough starter?"\n'
                '||>Response:\n"\\"Mix equal parts flour and water.\\""\n\n||>Title:'
            )
        ],
        "title",
    ),
    Case(
        "librechat langchain title prompt",
        [
            system(
                "Write a concise title for this conversation in the given language. Title in 5 Words or Less. No "
                "Punctuation or Quotation. Must be in Title Case, written in the given Language. Start the title "
                "with one emoji that fits the topic (REQUIRED), The emoji should help communicate the subject\n"
                + LIBRECHAT_CONVO
            ),
            user("Language: English"),
        ],
        "title",
    ),
    Case(
        "librechat legacy titleConvo",
        [
            system(
                "Detect user language and write in the same language an extremely concise title for this "
                "conversation, which you must accurately detect. Write in the detected language. Title in 5 Words "
                'or Less. No Punctuation or Quotation.\n\n    ||>User:\n    "hi"\n    ||>Title:'
            )
        ],
        "title",
    ),
    # --- SillyTavern (chat completion: the quiet prompt is a system message after the chat)
    Case(
        "sillytavern summarize",
        ST_CHAT
        + [
            system(
                "Ignore previous instructions. Summarize the most important facts and events in the story so far. "
                "If a summary already exists in your memory, use that as a base and expand with new facts. Limit "
                "the summary to 200 words or less. Your response should include nothing but the summary."
            )
        ],
        "summary",
    ),
    Case(
        "sillytavern summarize (older prompt)",
        ST_CHAT
        + [
            system(
                "[Pause your roleplay. Summarize the most important facts and events that have happened in the chat "
                "so far. If a summary already exists in your memory, use that as a base and expand with new facts. "
                "Limit the summary to 200 words or less. Your response should include nothing but the summary.]"
            )
        ],
        "summary",
    ),
    Case(
        "sillytavern expression classification",
        [
            user("*She smiles warmly.* You're safe now."),
            user(
                "Ignore previous instructions. Classify the emotion of the last message. Output just one word, e.g. "
                '"joy" or "anger". Choose only one of the following labels: admiration, amusement, anger, '
                "annoyance, approval, caring, confusion, curiosity, desire, joy, neutral"
            ),
        ],
        "expression",
    ),
    Case(
        "sillytavern image prompt",
        ST_CHAT
        + [
            system(
                "In the next response I want you to provide only a detailed comma-delimited list of keywords and "
                "phrases which describe Seraphina. The list must include all of the following items in this "
                "order: name, species and race, gender, age, clothing, occupation, physical features and "
                "appearances. Prefix your description with the phrase 'full body portrait,'"
            )
        ],
        "image-prompt",
    ),
    # --- LobeChat
    Case(
        "lobechat topic title",
        [
            system(
                "You are a professional conversation summarizer. Generate a concise title that captures the "
                "essence of the conversation.\n\nRules:\n- Output ONLY the title text, no explanations or "
                "additional context\n- Maximum 10 words\n- Use the language specified by the locale code: en-US"
            ),
            user("user: How do I make sourdough starter?\nassistant: Mix flour and water and feed it daily."),
        ],
        "title",
    ),
    Case(
        "lobechat topic title (before the chains)",
        [
            system("你是一名擅长会话的助理，你需要将用户的会话总结为 10 个字以内的标题，不需要包含标点符号"),
            user(
                "user: 你好\nassistant: 你好！有什么可以帮你？\n\n请总结上述对话为10个字以内的标题，不需要包含标点符号"
            ),
        ],
        "title",
    ),
    Case(
        "lobechat agent tags",
        [
            system(
                "你是一名擅长会话标签总结的助理，你需要将用户的输入的内容提炼出分类标签，使用`,`分隔，不超过 5 个标签，"
                "并翻译为目标语言。"
            ),
            user("输入: {You are a travel planner.} [en-US]"),
        ],
        "tags",
    ),
    Case(
        "lobechat pick emoji",
        [
            system(
                "You are an emoji expert who selects the most appropriate emoji to represent concepts, emotions, "
                "or topics.\n\nRules:\n- Output ONLY a single emoji (1-2 characters maximum)"
            ),
            user("I just got a promotion at work"),
            bot("🎉"),
            user("You are a travel planner"),
        ],
        "emoji",
    ),
    Case(
        "lobechat history summary",
        [
            system(
                "You're an assistant who's good at extracting key takeaways from conversations and summarizing them."
            ),
            user(
                "<chat_history>\n<user>How do I centre a div?</user>\n<assistant>Use flexbox.</assistant>\n"
                "</chat_history>\n\nPlease summarize the above conversation and retain key information. The "
                "summarized content will be used as context for subsequent prompts, and should be limited to 400 "
                "tokens."
            ),
        ],
        "summary",
    ),
    Case(
        "lobechat query rewrite",
        [
            system(
                "Given the following conversation and a follow-up question, rephrase the follow up question to be "
                "a standalone question, in its original language. Keep as much details as possible from previous "
                "messages. Keep entity names and all.\n<chatHistory>\nuser: Tell me about Rust\n</chatHistory>\n"
            ),
            user("Follow Up Input: and its borrow checker?, it's standalone query:"),
        ],
        "search-query",
    ),
    # --- NextChat (the request is appended after the chat)
    Case(
        "nextchat topic",
        NEXTCHAT_CHAT
        + [
            user(
                "Please generate a four to five word title summarizing our conversation without any lead-in, "
                "punctuation, quotation marks, periods, symbols, bold text, or additional text. Remove enclosing "
                "quotation marks."
            )
        ],
        "title",
    ),
    Case(
        "nextchat summarize (system message)",
        NEXTCHAT_CHAT
        + [system("Summarize the discussion briefly in 200 words or less to use as a prompt for future context.")],
        "summary",
    ),
    # --- Chatbox
    Case(
        "chatbox name conversation",
        [
            user(
                "Based on the chat history, give this conversation a name.\nKeep it short - 30 characters max, "
                'example "Mars\'s Distance".\nUse English.\nJust provide the name, nothing else.\n\n'
                "Here's the conversation:\n\n```\nHow far is Mars?\n\n---------\n\nAbout 225 million km.\n```\n\n"
                "Name this conversation in 30 characters or less.\nUse English.\nOnly give the name, nothing else."
                "\n\nThe name is:"
            )
        ],
        "title",
    ),
    Case(
        "chatbox name conversation (older)",
        [
            user(
                "Name the conversation based on the chat records.\nPlease provide a concise name, within 10 "
                "characters and without quotation marks.\nPlease use the speak language in the conversation.\n"
                "You only need to answer with the name.\nThe following is the conversation:\n\n```\nHow far is "
                "Mars?\n```\n\nThe conversation is named:"
            )
        ],
        "title",
    ),
    # --- HuggingFace chat-ui
    Case(
        "chat-ui title",
        [
            system(
                "You are a summarization AI. You'll never answer a user's question directly, but instead summarize "
                "the user's request into a single short sentence of four words or less. Always start your answer "
                "with an emoji relevant to the summary"
            ),
            user("Who is the president of Gabon?"),
            bot("🇬🇦 President of Gabon"),
            user("How far is Mars?"),
        ],
        "title",
    ),
    Case(
        "chat-ui web search query",
        [
            system(
                "You are tasked with generating web search queries. Give me an appropriate query to answer my "
                "question for google search. Answer with only the query. Today is Monday, January 13, 2025"
            ),
            user("Previous questions: \n- How far is Mars?\n\nCurrent Question: and Jupiter?"),
        ],
        "search-query",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_recognises_frontend_task(case: Case) -> None:
    assert housekeeping_kind(case.messages) == case.kind


ORDINARY = {
    "asks for a title": [user("Can you suggest a title for my blog post about sourdough baking?")],
    "asks for a concise title": [user("Write a concise title for my essay on climate change, 5 words or less.")],
    "asks for a summary": [user("Summarize the most important points of this article: Rust 1.80 was released...")],
    "asks for tags": [user("Generate some tags for my photo of a sunset over the sea.")],
    "asks how titles work": [user("How does Open WebUI generate chat titles and tags for conversations?")],
    "roleplay with an injected summary": [
        system("Write Seraphina's next reply.\n[Summary: Anon woke up in Seraphina's glade after an attack.]"),
        bot("*She smiles.* Feeling better?"),
        user("Much better, thanks."),
    ],
    "nextchat memory prompt": [
        system("This is a summary of the chat history as a recap: the user is learning CSS layout."),
        user("And how do I centre text vertically?"),
    ],
    "an earlier turn quoted a task prompt": [
        user("What does this prompt do? " + OWUI_TITLE),
        bot("It asks the model for a short JSON title of the chat."),
        user("Thanks, that makes sense."),
    ],
    "empty request": [],
    "content that is not text": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "user"}],
}


@pytest.mark.parametrize("messages", ORDINARY.values(), ids=ORDINARY.keys())
def test_ordinary_chat_is_not_housekeeping(messages: List[dict]) -> None:
    assert housekeeping_kind(messages) is None


def test_the_instruction_wins_over_text_quoted_in_its_history() -> None:
    """A title request whose chat history quotes the follow-ups prompt is still a title request."""
    quoted = OWUI_TITLE.replace(OWUI_HISTORY, "USER: " + OWUI_FOLLOW_UPS)
    assert housekeeping_kind([user(quoted)]) == "title"


def test_text_completion_summary_is_found_in_the_parsed_prompt() -> None:
    """SillyTavern in text-completion mode: the quiet prompt is the last system turn of the rendered prompt."""
    prompt = (
        "<|im_start|>system\nWrite Seraphina's next reply.<|im_end|>\n"
        "<|im_start|>user\nAnon: Where am I?<|im_end|>\n"
        "<|im_start|>assistant\nSeraphina: In my glade.<|im_end|>\n"
        "<|im_start|>system\n[Pause your roleplay. Summarize the most important facts and events that have "
        "happened in the chat so far. Limit the summary to 200 words or less.]<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert housekeeping_kind(parse_prompt(prompt).messages) == "summary"


def test_whitespace_and_case_do_not_matter() -> None:
    request = "###   TASK:\r\n\tGENERATE 1-3 BROAD TAGS categorizing   the main\nthemes of the chat history."
    assert housekeeping_kind([user(request)]) == "tags"


LONG_HISTORY = "USER: " + "Tell me more about the borrow checker. " * 5000  # about 200 KB


def test_long_message_instruction_at_the_start_is_found() -> None:
    """Open WebUI puts the whole recent history after its instruction."""
    assert housekeeping_kind([user(OWUI_TITLE.replace(OWUI_HISTORY, LONG_HISTORY))]) == "title"


def test_long_message_instruction_at_the_end_is_found() -> None:
    """LobeChat puts its summary request after the history it summarises."""
    request = LONG_HISTORY + "\n\nPlease summarize the above conversation and retain key information. The summarized"
    assert housekeeping_kind([user(request)]) == "summary"


def test_long_message_phrase_buried_in_the_middle_is_not_an_instruction() -> None:
    text = LONG_HISTORY + " Generate 1-3 broad tags categorizing the main themes of the chat history. " + LONG_HISTORY
    assert housekeeping_kind([user(text)]) is None
