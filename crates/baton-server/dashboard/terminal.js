// A terminal agent's screen, live: xterm.js (vendored in vendor/, loaded by the page as a
// classic script that defines `Terminal`) fed by `GET /agents/{name}/terminal`, a WebSocket
// that sends the terminal's bytes and, for a role that may control agents, takes keystrokes.

import * as api from "./api.js";

// xterm.js sizes and colours the terminal with <style> elements it makes. The page's content
// security policy allows only style elements that carry the nonce it was served with, so each
// one made is given it (our scripts are the only ones the policy lets run).
const nonce = document.querySelector('meta[name="baton-style-nonce"]')?.content;
if (nonce) {
  const createElement = Document.prototype.createElement;
  Document.prototype.createElement = function (tag, options) {
    const element = createElement.call(this, tag, options);
    if (String(tag).toLowerCase() === "style") element.setAttribute("nonce", nonce);
    return element;
  };
}

/** The terminal's size: the pseudo-terminal Baton runs the program in is 120x40. */
const COLS = 120;
const ROWS = 40;

/**
 * Shows agent `name`'s screen in `container` and follows it; keys typed into it are sent when
 * `mayType`. `onState(state, detail)` hears "connecting", "live", "refused" (something typed was
 * not accepted) and "closed". Returns a function that disconnects and removes the terminal.
 */
export function openTerminal(container, name, { mayType, onState }) {
  const terminal = new globalThis.Terminal({
    cols: COLS, rows: ROWS, disableStdin: !mayType, cursorBlink: mayType, scrollback: 2000, fontSize: 13,
    screenReaderMode: false,
  });
  terminal.open(container);
  // A browser's WebSocket sends no Authorization header: the token goes as a subprotocol.
  const protocols = ["baton.terminal"];
  const bearer = api.token();
  if (bearer) protocols.push(`bearer.${bearer}`);
  const address = new URL(api.at(`/agents/${encodeURIComponent(name)}/terminal`));
  address.protocol = address.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(address, protocols);
  socket.binaryType = "arraybuffer";
  let opened = false;
  onState("connecting");
  socket.addEventListener("open", () => {
    opened = true;
    onState("live");
  });
  socket.addEventListener("message", (message) => {
    if (typeof message.data !== "string") {
      terminal.write(new Uint8Array(message.data));
      return;
    }
    try {
      const { error } = JSON.parse(message.data);
      if (error) onState("refused", error.message);
    } catch {
      // Not ours to read.
    }
  });
  socket.addEventListener("close", (closed) => {
    const why = closed.reason || (opened ? "the connection closed" : "the server did not open the terminal: the program may not be running, or the agent is not served here");
    onState("closed", why);
  });
  const typing = mayType
    ? terminal.onData((data) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(data);
    })
    : null;
  return () => {
    if (typing) typing.dispose();
    socket.close();
    terminal.dispose();
  };
}
