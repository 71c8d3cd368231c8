"""The chat page at `/`: one self-contained HTML file (no CDN, no framework: the server may run
without internet) that streams replies from /v1/chat/completions, with the sampling knobs and
a tokens-per-second readout."""

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tfllm chat</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; display: flex; height: 100vh; }
  aside { width: 14rem; padding: 1rem; background: #f4f4f6; border-right: 1px solid #ddd; }
  aside label { display: block; margin: .6rem 0 .1rem; font-size: 13px; color: #444; }
  aside input { width: 100%; box-sizing: border-box; }
  main { flex: 1; display: flex; flex-direction: column; }
  #log { flex: 1; overflow-y: auto; padding: 1rem; }
  .turn { margin: .4rem 0; padding: .5rem .7rem; border-radius: 6px; white-space: pre-wrap; }
  .user { background: #e6efff; }
  .assistant { background: #f1f1f1; }
  form { display: flex; gap: .5rem; padding: .7rem; border-top: 1px solid #ddd; }
  textarea { flex: 1; height: 3.2rem; font: inherit; }
  #status { font-size: 13px; color: #555; padding: 0 .7rem .5rem; }
</style>
</head>
<body>
<aside>
  <strong>tfllm</strong> <span id="model"></span>
  <label for="temperature">temperature</label>
  <input id="temperature" type="number" min="0" max="2" step="0.1" value="0">
  <label for="top_p">top_p</label>
  <input id="top_p" type="number" min="0.01" max="1" step="0.05" value="1">
  <label for="max_tokens">max_tokens (empty: the rest of the context)</label>
  <input id="max_tokens" type="number" min="1" step="1" value="">
  <label for="seed">seed</label>
  <input id="seed" type="number" min="0" step="1" value="0">
  <p><button id="clear" type="button">New chat</button></p>
</aside>
<main>
  <div id="log"></div>
  <div id="status">ready</div>
  <form id="form">
    <textarea id="message" placeholder="Message"></textarea>
    <button id="send" type="submit">Send</button>
  </form>
</main>
<script>
const log = document.getElementById("log");
const statusLine = document.getElementById("status");
let messages = [];
let model = null;

fetch("/v1/models").then(r => r.json()).then(list => {
  model = list.data[0].id;
  document.getElementById("model").textContent = model;
});

function turn(role, text) {
  const div = document.createElement("div");
  div.className = "turn " + role;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

function knob(id, parse) {
  const value = document.getElementById(id).value;
  return value === "" ? undefined : parse(value);
}

document.getElementById("clear").onclick = () => { messages = []; log.textContent = ""; };

document.getElementById("form").onsubmit = async (event) => {
  event.preventDefault();
  const box = document.getElementById("message");
  const text = box.value.trim();
  if (!text || !model) return;
  box.value = "";
  messages.push({role: "user", content: text});
  turn("user", text);
  const reply = turn("assistant", "");
  const body = {
    model, messages, stream: true,
    stream_options: {include_usage: true},
    temperature: knob("temperature", parseFloat),
    top_p: knob("top_p", parseFloat),
    max_tokens: knob("max_tokens", v => parseInt(v, 10)),
    seed: knob("seed", v => parseInt(v, 10)),
  };
  document.getElementById("send").disabled = true;
  statusLine.textContent = "generating";
  const started = performance.now();
  let first = null, tokens = 0, content = "", reason = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
    if (!response.ok) {
      const error = await response.json();
      throw new Error(error.error ? error.error.message : response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        for (const choice of chunk.choices) {
          if (choice.delta && choice.delta.content) {
            if (first === null) first = performance.now();
            content += choice.delta.content;
            reply.textContent = content;
          }
          if (choice.finish_reason) reason = choice.finish_reason;
        }
      }
    }
    messages.push({role: "assistant", content});
    const seconds = (performance.now() - (first || started)) / 1000;
    const rate = seconds > 0 ? (tokens / seconds).toFixed(1) : "-";
    statusLine.textContent = `done (${reason}): ${tokens} tokens, ${rate} tokens/s`;
  } catch (error) {
    statusLine.textContent = "error: " + error.message;
  } finally {
    document.getElementById("send").disabled = false;
  }
};

document.getElementById("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    document.getElementById("form").requestSubmit();
  }
});
</script>
</body>
</html>
"""
