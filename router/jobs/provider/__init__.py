"""Provider batch lanes: jobs gathered into a provider's Batch API (OpenAI, Anthropic) and mapped back.

- wire: what a provider client gives the bridge (a line's result, a batch's
  state) and the HTTP errors of provider calls;
- openai, anthropic: one client per provider, from its published API shapes;
- store: provider batches in the job database, and the job moves they make;
- bridge: the loop that gathers, uploads, polls, maps results and falls back.
"""
