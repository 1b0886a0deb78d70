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
  // Subscribes awaiting their reply (request id -> channels). One answered "unavailable"
  // (the gateway could not reach Redis) is sent again, with recover, after 1, 2, 4 s, then
  // every 8 s while the socket is open: channels failing meanwhile join the same retry.
  const asked = new Map();
  const RETRY_FIRST = 1000;
  const RETRY_MAX = 8000;
  // channels: those waiting; sent: the id of the last retry sent; due: when the next is.
  const retry = { channels: new Set(), tries: 0, due: 0, timer: null, ticker: null, sent: null };

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
    if (!socket || socket.readyState !== WebSocket.OPEN) return null;
    frame.id = nextId++;
    socket.send(JSON.stringify(frame));
    return frame.id;
  }

  function subscribeTo(channels) {
    // recover: from the last position seen on each channel, so nothing missed is lost
    const frame = { type: "subscribe", channels };
    const recover = {};
    for (const channel of channels) {
      if (positions.has(channel)) recover[channel] = positions.get(channel);
    }
    if (Object.keys(recover).length) frame.recover = recover;
    const id = send(frame);
    if (id !== null) asked.set(id, channels);
    return id;
  }

  function showRetry() {
    // The visible status line of a pending retry (hidden when there is none).
    const line = $("retry");
    if (!retry.channels.size || socket === null) {
      line.hidden = true;
      line.textContent = "";
      return;
    }
    const names = [...retry.channels].join(", ");
    const left = Math.max(0, Math.ceil((retry.due - Date.now()) / 1000));
    const when = retry.timer === null ? "now" : `in ${left} s`;
    line.textContent =
      `Redis unavailable: subscribing to ${names} again ${when} (retry ${retry.tries})`;
    line.hidden = false;
  }

  function stopRetry(forget) {
    clearTimeout(retry.timer);
    clearInterval(retry.ticker);
    retry.timer = null;
    retry.ticker = null;
    retry.tries = 0;
    if (forget) retry.channels.clear();
    showRetry();
  }

  function scheduleRetry(channels) {
    channels.forEach((c) => retry.channels.add(c));
    if (retry.timer !== null) {
      showRetry(); // a retry is pending: these channels join it
      return;
    }
    const delay = Math.min(RETRY_FIRST * 2 ** retry.tries, RETRY_MAX);
    retry.tries += 1;
    retry.due = Date.now() + delay;
    retry.timer = setTimeout(() => {
      retry.timer = null;
      clearInterval(retry.ticker);
      retry.ticker = null;
      showRetry();
      if (retry.channels.size) retry.sent = subscribeTo([...retry.channels]);
    }, delay);
    clearInterval(retry.ticker);
    retry.ticker = setInterval(showRetry, 1000);
    log("resync", `Redis unavailable: subscribing again in ${delay / 1000} s`,
        [...retry.channels].join(", "));
    showRetry();
  }

  function subscribedTo(channels) {
    const retried = retry.tries;
    channels.forEach((c) => retry.channels.delete(c));
    if (retry.channels.size) return;
    stopRetry(true);
    if (retried) log("info", `subscribed after ${retried} ${retried === 1 ? "retry" : "retries"}`);
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
        asked.delete(frame.id);
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
        subscribedTo(frame.channels);
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
      case "error": {
        log("error", `${frame.code}: ${frame.message}`);
        let channels = asked.get(frame.id) || [];
        asked.delete(frame.id);
        // A retry's channels unsubscribed meanwhile are not asked for again.
        if (frame.id === retry.sent) channels = channels.filter((c) => retry.channels.has(c));
        if (channels.length && frame.code === "unavailable") scheduleRetry(channels);
        break;
      }
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
    const ws = token ? new WebSocket(url, ["bearer", token]) : new WebSocket(url);
    socket = ws;
    setStatus("connecting", "connecting...");
    socket.onopen = () => {
      setStatus("open", `connected (${token ? "token" : "session cookie"})`);
      // The channels subscribed before, and those still waiting for a retry.
      const wanted = new Set([...subscribed, ...retry.channels]);
      if (!wanted.size) wanted.add("system:broadcast");
      subscribed.clear(); // until the reply: "none" while a retry is pending
      render();
      stopRetry(true);
      subscribeTo([...wanted]);
    };
    socket.onmessage = (event) => {
      try {
        handle(JSON.parse(event.data));
      } catch (error) {
        log("error", `unreadable frame: ${error}`);
      }
    };
    socket.onclose = (event) => {
      if (socket !== ws) return; // replaced (a new login): the new socket's state stays
      const why = CLOSE_REASONS[event.code] || "closed";
      socket = null;
      asked.clear();
      stopRetry(false); // the channels waiting are subscribed again on the next connect
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
    subscribeTo([$("channel").value.trim()]);
  });
  $("unsubscribe").addEventListener("click", () => {
    const channel = $("channel").value.trim();
    if (retry.channels.delete(channel) && !retry.channels.size) stopRetry(true);
    showRetry();
    send({ type: "unsubscribe", channels: [channel] });
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
