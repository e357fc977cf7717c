"""A client of OpenAI-compatible chat endpoints (`POST {url}/chat/completions`).

A local vLLM, llama.cpp or Ollama server speaks this protocol, and so do hosted ones. Prompt
expansion (`ChatExpander`) and captioning real videos (`EndpointCaptioner`) both ask through
it: one place for the timeout, the retries and the errors a user can act on.

    chat = ChatClient("http://localhost:8000/v1", "qwen2.5-vl", what="captioning endpoint")
    text = chat.complete([{"role": "user", "content": "Say hi"}], temperature=0.2)
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


class ChatClient:
    """Chat completions from one model of one endpoint, with a timeout and retries.

    `what` names the endpoint in errors ("the expansion endpoint ..."). Server errors (5xx),
    timeouts and refused connections are retried with a short back-off; client errors (4xx)
    are not, as they would not change."""

    def __init__(
        self, url: str, model: str, timeout: float = 30.0, retries: int = 2,
        what: str = "chat endpoint",
    ) -> None:  # fmt: skip
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the {what} URL must start with http:// or https://, got {url!r}")
        if not model:
            raise ValueError(f"name the {what}'s model (the name its server serves it under)")
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.what = what

    def complete(self, messages: list[dict], **options) -> str:
        """The text of the model's answer to `messages` (`options` such as temperature and
        seed go into the request). ValueError when the endpoint does not answer, answers
        something that is not a chat completion, or answers nothing."""
        answer = self._post({"model": self.model, **options, "messages": messages})
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{self.url} answered something that is not a chat completion: "
                             f"{json.dumps(answer)[:200]}") from None  # fmt: skip
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{self.url} answered with an empty message; try another model")
        return text.strip()

    def _post(self, body: dict) -> dict:
        request = urllib.request.Request(
            f"{self.url}/chat/completions", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )  # fmt: skip
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"{self.url} did not answer JSON ({error})") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                last = error
                if isinstance(error, urllib.error.HTTPError) and error.code < 500:
                    raise ValueError(  # a client error will not change on retry
                        f"the {self.what} {self.url} refused the request (HTTP {error.code} "
                        f"{error.reason}); check the model name {self.model!r}"
                    ) from None
                time.sleep(min(2.0**attempt * 0.2, 2.0))
        raise ValueError(
            f"the {self.what} {self.url} did not answer after {self.retries + 1} tries "
            f"({getattr(last, 'reason', last)}); check that the server runs and the URL ends "
            "before /chat/completions (e.g. http://localhost:8000/v1)"
        )


__all__ = ["ChatClient"]
