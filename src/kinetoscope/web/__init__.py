"""The web front end: `kinetoscope demo`, a Gradio app over the pipeline (`web.demo` holds
the handlers, testable without a browser; `web.app` the page). Needs the `demo` extra."""
