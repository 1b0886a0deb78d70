// The demo page of the example gateway: log in, open one WebSocket, subscribe, publish.
// Plain JavaScript, no dependencies. The protocol is described in middleware/websocket/bridge.py.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const CLOSE_REASONS = {
    1000: "closed",
    1001: "server shutting down",
    1006: "connection lost",
    1008: "refused (policy)",
    1009: "frame too big",
    1011: "server error",
    1012: "server restarting",
    1013: "try again later",
    4000: "disconnected by the server",
    4401: "token expired or revoked: log in again",
    4403: "session ended: log in again",
    4408: "idle timeout",
  };
  let token = null; // kept in memory only; after a reload the session cookie is used
  let csrf = null; // the session's CSRF token: sent with every unsafe request (X-CSRF-Token)
  let socket = null;
  let nextId = 1;
  const subscribed = new Set();
  // The last position seen on each channel with history: a reconnect recovers from there.
  const positions = new Map();

  function log(kind, text, channel) {
    const item = document.createElement("li");
    item.className = kind;
    const time = new Date().toLocaleTimeString();
    item.append(`${time} `);
    if (channel) {
      const tag = document.createElement("span");
      tag.className = "channel";
      tag.textContent = channel;
      item.append(tag, " ");
    }
    item.append(text);
    const list = $("log");
    list.prepend(item);
    while (list.children.length > 200) list.lastChild.remove();
  }

  function render() {
    const open = socket !== null && socket.readyState === WebSocket.OPEN;
    const user = $("whoami").dataset.user || "";
    $("subscribed").textContent = subscribed.size ? [...subscribed].join(", ") : "none";
    $("connect").disabled = !user || socket !== null;
    $("disconnect").disabled = socket === null;
    $("logout").disabled = !user;
    for (const id of ["subscribe", "unsubscribe", "publish"]) $(id).disabled = !open;
  }

  function setUser(name) {
    $("whoami").dataset.user = name || "";
    $("whoami").textContent = name || "nobody";
    if (name) $("channel").value = $("channel").value || "system:broadcast";
    render();
  }

  function setStatus(state, label) {
    $("status").dataset.state = state;
    $("status").textContent = label;
    render();
  }

  function send(frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    frame.id = nextId++;
    socket.send(JSON.stringify(frame));
  }

  function handle(frame) {
    switch (frame.type) {
      case "batch":
        frame.messages.forEach(handle);
        break;
      case "message":
        if (frame.offset !== undefined) {
          positions.set(frame.channel, { epoch: frame.epoch, offset: frame.offset });
        }
        log("message", JSON.stringify(frame.data), frame.channel);
        break;
      case "subscribed": {
        frame.channels.forEach((c) => subscribed.add(c));
        const recovered = frame.recovered || {};
        for (const [channel, position] of Object.entries(frame.positions || {})) {
          // recovered: the missed messages follow (and move the position on themselves)
          if (recovered[channel] !== true) positions.set(channel, position);
        }
        log("info", `subscribed to ${frame.channels.join(", ")}`);
        for (const [channel, ok] of Object.entries(recovered)) {
          log(ok ? "info" : "resync",
              ok ? "recovered the missed messages" : "could not recover: refetch", channel);
        }
        render();
        break;
      }
      case "unsubscribed":
        frame.channels.forEach((c) => {
          subscribed.delete(c);
          positions.delete(c);
        });
        log("info", `unsubscribed from ${frame.channels.join(", ")}`);
        render();
        break;
      case "published":
        log("info", `published (request ${frame.id})`);
        break;
      case "ping":
        socket.send('{"type":"pong"}');
        break;
      case "pong":
        break;
      case "resync":
        log("resync", `messages may have been missed on ${frame.channels.join(", ")}`);
        break;
      case "error":
        log("error", `${frame.code}: ${frame.message}`);
        break;
      case "join":
      case "leave": // presence: who came and went (up to the channel's join_leave_limit)
        log("info", `${frame.user} ${frame.type === "join" ? "joined" : "left"}`, frame.channel);
        break;
      default:
        log("info", JSON.stringify(frame));
    }
  }

  function connect() {
    if (socket) return;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const url = `${scheme}${location.host}/ws`;
    // Browsers cannot set headers on a WebSocket: the token travels as a subprotocol.
    socket = token ? new WebSocket(url, ["bearer", token]) : new WebSocket(url);
    setStatus("connecting", "connecting...");
    socket.onopen = () => {
      setStatus("open", `connected (${token ? "token" : "session cookie"})`);
      const wanted = subscribed.size ? [...subscribed] : ["system:broadcast"];
      subscribed.clear();
      const recover = {};
      for (const channel of wanted) {
        if (positions.has(channel)) recover[channel] = positions.get(channel);
      }
      const frame = { type: "subscribe", channels: wanted };
      if (Object.keys(recover).length) frame.recover = recover;
      send(frame);
    };
    socket.onmessage = (event) => {
      try {
        handle(JSON.parse(event.data));
      } catch (error) {
        log("error", `unreadable frame: ${error}`);
      }
    };
    socket.onclose = (event) => {
      const why = CLOSE_REASONS[event.code] || "closed";
      socket = null;
      setStatus("closed", `disconnected (${event.code}: ${why})`);
      log("info", `socket closed: ${event.code} ${why}`);
    };
  }

  async function login(event) {
    event.preventDefault();
    const username = $("username").value;
    const response = await fetch("/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ username, password: $("password").value }),
    });
    if (!response.ok) {
      log("error", `login failed (${response.status})`);
      return;
    }
    const body = await response.json();
    token = body.access_token;
    csrf = body.csrf_token;
    if (socket) socket.close(1000);
    socket = null;
    setUser(username);
    log("info", `logged in as ${username}`);
    $("channel").value = "system:broadcast";
    $("pub-channel").value = "system:broadcast";
    connect();
  }

  async function logout() {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    if (csrf) headers["X-CSRF-Token"] = csrf;
    const response = await fetch("/auth/logout", {
      method: "POST",
      headers,
      credentials: "same-origin",
    });
    if (!response.ok) log("error", `logout failed (${response.status})`);
    token = null;
    csrf = null;
    setUser(null);
    log("info", "logged out");
  }

  async function restore() {
    // A reload loses the token but keeps the (HttpOnly) session cookie.
    const response = await fetch("/api/session", { credentials: "same-origin" });
    if (!response.ok) return;
    const session = await response.json();
    csrf = session.csrf_token;
    setUser(session.user_id);
    log("info", `session of ${session.user_id} restored`);
    connect();
  }

  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("connect").addEventListener("click", connect);
  $("disconnect").addEventListener("click", () => socket && socket.close(1000));
  $("subscribe-form").addEventListener("submit", (event) => {
    event.preventDefault();
    send({ type: "subscribe", channels: [$("channel").value.trim()] });
  });
  $("unsubscribe").addEventListener("click", () => {
    send({ type: "unsubscribe", channels: [$("channel").value.trim()] });
  });
  $("publish-form").addEventListener("submit", (event) => {
    event.preventDefault();
    let data;
    try {
      data = JSON.parse($("pub-data").value);
    } catch (error) {
      log("error", "the data must be JSON");
      return;
    }
    send({ type: "publish", channel: $("pub-channel").value.trim(), data });
  });
  render();
  restore().catch((error) => log("error", String(error)));
})();
