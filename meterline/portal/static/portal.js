/* Meterline usage portal: reads the portal token from the address's fragment, asks /graphql for
   the company's usage and billing, and draws it. No libraries, no inline styles (CSP). */
"use strict";

(() => {
  const TOKEN_KEY = "meterline.portalToken";
  const INVALID_LINK = "This link has expired or is not valid \u2014 ask for a new one";
  const REQUEST_TIMEOUT_MS = 30000;
  const EVENTS_PAGE = 20;

  const PORTAL_QUERY = `query Portal {
  usageLimits {
    tier scheduledTier scheduledTierEffectiveAt hardCap exceeded billingStatus graceEndsAt subscriptionStatus
    meters { eventType used included remaining percentUsed exceeded overageQuantity
             unitPrice { amount currency } overageCost { amount currency } }
  }
  monthlySummary { month totalOverageCost { amount currency } }
  usageHistory(months: 12) { month meters { eventType used } }
  upcomingInvoice { amountDue { amount currency } periodStart periodEnd
                    lines { description quantity amount { amount currency } } }
  paymentHistory(limit: 24) { id number status amountDue { amount currency } amountPaid { amount currency }
                              periodStart periodEnd paidAt hostedInvoiceUrl invoicePdf }
}`;

  const EVENTS_QUERY = `query Events($after: String) { usageEvents(first: ${EVENTS_PAGE}, after: $after) {
  edges { node { id eventType quantity occurredAt idempotencyKey syncState } }
  pageInfo { hasNextPage endCursor } } }`;

  const EVENT_NAMES = {
    GUEST_INVITATION: "Guest invitations",
    SMS_SENT: "SMS",
    AI_QUERY: "AI queries",
    WHATSAPP_MESSAGE: "WhatsApp messages",
    EMAIL_SENT: "Emails",
  };
  const TIER_NAMES = {
    FREE: "Free",
    STARTER: "Starter",
    PROFESSIONAL: "Professional",
    ENTERPRISE: "Enterprise",
  };
  const SUBSCRIPTION_STATUSES = {
    ACTIVE: ["Active", "good"],
    TRIALING: ["Trial", "good"],
    PAST_DUE: ["Past due", "warn"],
    UNPAID: ["Unpaid", "bad"],
    PAUSED: ["Paused", "warn"],
    INCOMPLETE: ["Incomplete", "warn"],
    INCOMPLETE_EXPIRED: ["Expired before completion", "bad"],
    CANCELED: ["Cancelled", "neutral"],
  };
  const INVOICE_STATUSES = {
    draft: ["Draft", "neutral"],
    open: ["Open", "warn"],
    paid: ["Paid", "good"],
    uncollectible: ["Uncollectible", "bad"],
    void: ["Void", "neutral"],
  };
  const SYNC_STATES = {
    LOCAL_ONLY: ["Local only", "Recorded here only: not billed through Stripe"],
    PENDING: ["Pending", "Waiting to be sent to Stripe"],
    SENDING: ["Sending", "Being sent to Stripe"],
    SENT: ["Sent", "Sent to Stripe"],
    FAILED: ["Failed", "Stripe did not accept it"],
    UNKNOWN: ["Unknown", "Not known whether Stripe received it"],
  };

  /* ---------- formatting ---------- */

  const LOCALE = (() => {
    try {
      return Intl.DateTimeFormat.supportedLocalesOf([navigator.language])[0] || "en";
    } catch {
      return "en";
    }
  })();
  const COUNT = new Intl.NumberFormat(LOCALE);
  const DATE = new Intl.DateTimeFormat(LOCALE, {
    timeZone: "UTC", day: "numeric", month: "long", year: "numeric",
  });
  const DATE_TIME = new Intl.DateTimeFormat(LOCALE, {
    timeZone: "UTC", day: "numeric", month: "long", year: "numeric",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  });
  const MONTH = new Intl.DateTimeFormat(LOCALE, { timeZone: "UTC", month: "long", year: "numeric" });
  const MONTH_NARROW = new Intl.DateTimeFormat(LOCALE, { timeZone: "UTC", month: "narrow" });
  const LIST = new Intl.ListFormat("en", { style: "long", type: "conjunction" });
  const moneyFormats = new Map();

  /** A table's own entry (never an inherited property such as "constructor"). */
  const own = (map, key) => (Object.prototype.hasOwnProperty.call(map, key) ? map[key] : undefined);
  const count = (n) => (typeof n === "number" && Number.isFinite(n) ? COUNT.format(n) : "\u2014");
  // percentUsed as the API gives it (up to two decimals): 99.5 stays 99.5.
  const PERCENT = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 2 });
  const percent = (p) => `${PERCENT.format(p)}%`;
  const plural = (n, one, many) => `${count(n)} ${n === 1 ? one : many}`;
  const eventName = (type) => own(EVENT_NAMES, type) || String(type);
  const tierName = (tier) =>
    own(TIER_NAMES, tier) || String(tier).charAt(0) + String(tier).slice(1).toLowerCase();

  /** Money from its decimal string: the currency's usual decimals, more when the amount has
      them (a unit price of 0.001), never rounded. */
  function money(m) {
    if (!m || m.amount == null) return "\u2014";
    const amount = String(m.amount);
    const currency = String(m.currency || "").toUpperCase();
    const fraction = (/\.(\d*?)0*$/.exec(amount) || ["", ""])[1].length;
    const key = `${currency}:${fraction}`;
    let format = moneyFormats.get(key);
    if (format === undefined) {
      try {
        const usual = new Intl.NumberFormat(LOCALE, { style: "currency", currency });
        const digits = usual.resolvedOptions().minimumFractionDigits;
        format = fraction > digits
          ? new Intl.NumberFormat(LOCALE, {
              style: "currency", currency, minimumFractionDigits: digits, maximumFractionDigits: Math.min(fraction, 20),
            })
          : usual;
      } catch {
        format = null;
      }
      moneyFormats.set(key, format);
    }
    // A string keeps every decimal exactly (Intl.NumberFormat v3).
    return format ? format.format(amount) : `${amount} ${currency}`.trim();
  }

  function parseDate(value) {
    if (!value) return null;
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? null : date;
  }
  const formatDate = (value) => {
    const d = parseDate(value);
    return d ? DATE.format(d) : "\u2014";
  };
  const formatDateTime = (value) => {
    const d = parseDate(value);
    return d ? `${DATE_TIME.format(d)} UTC` : "\u2014";
  };
  const formatMonth = (value) => {
    const d = parseDate(value);
    return d ? MONTH.format(d) : String(value);
  };

  /** A billing period: "December 2026" when it is exactly one calendar month (UTC), otherwise
      its first and last day, the end being exclusive. */
  function formatPeriod(startValue, endValue) {
    const start = parseDate(startValue);
    const end = parseDate(endValue);
    if (!start && !end) return "\u2014";
    if (!start || !end) return formatDate(startValue || endValue);
    const wholeMonth =
      start.getTime() === Date.UTC(start.getUTCFullYear(), start.getUTCMonth(), 1) &&
      end.getTime() === Date.UTC(start.getUTCFullYear(), start.getUTCMonth() + 1, 1);
    if (wholeMonth) return MONTH.format(start);
    const last = new Date(Math.max(start.getTime(), end.getTime() - 1));
    if (typeof DATE.formatRange === "function") return DATE.formatRange(start, last);
    return `${DATE.format(start)} \u2013 ${DATE.format(last)}`;
  }

  /** "YYYY-MM-01" keys of the `n` months ending with the month of `lastValue`, oldest first. */
  function monthKeys(lastValue, n) {
    const last = parseDate(lastValue) || new Date();
    const keys = [];
    for (let i = n - 1; i >= 0; i--) {
      const d = new Date(Date.UTC(last.getUTCFullYear(), last.getUTCMonth() - i, 1));
      keys.push(d.toISOString().slice(0, 10));
    }
    return keys;
  }
  const monthKey = (value) => {
    const d = parseDate(value);
    return d ? new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1)).toISOString().slice(0, 10) : null;
  };

  /** Sum of decimal strings, exactly. */
  function sumDecimals(values) {
    let scale = 0;
    const parts = values.map((v) => {
      const m = /^(-?)(\d*)(?:\.(\d+))?$/.exec(String(v).trim());
      if (!m) return null;
      scale = Math.max(scale, (m[3] || "").length);
      return m;
    });
    let total = 0n;
    for (const m of parts) {
      if (!m) continue;
      const digits = BigInt((m[2] || "0") + (m[3] || "").padEnd(scale, "0"));
      total += m[1] ? -digits : digits;
    }
    const negative = total < 0n;
    const text = (negative ? -total : total).toString().padStart(scale + 1, "0");
    const whole = scale ? text.slice(0, -scale) : text;
    return (negative ? "-" : "") + whole + (scale ? "." + text.slice(-scale) : "");
  }

  /** An absolute http(s) address, else null (never a javascript: link). */
  const safeUrl = (value) => {
    if (typeof value !== "string" || !value) return null;
    try {
      const url = new URL(value);
      return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
    } catch {
      return null;
    }
  };

  /* ---------- DOM ---------- */

  /** An element; attributes other than class/text/on* are set as given (never "style"). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }
  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }
  function setAttrs(el, attrs) {
    if (!attrs) return;
    for (const [key, value] of Object.entries(attrs)) {
      if (value == null || value === false || key === "style") continue;
      if (key === "class") el.setAttribute("class", value);
      else if (key === "text") el.textContent = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child == null || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
  }
  let uid = 0;
  const nextId = (prefix) => `${prefix}-${++uid}`;

  const main = document.getElementById("main");
  const content = document.getElementById("content");
  const plan = document.getElementById("plan");

  function clearPage() {
    plan.replaceChildren();
    content.replaceChildren();
  }
  function setBusy(busy) {
    main.setAttribute("aria-busy", busy ? "true" : "false");
  }
  function showLoading() {
    clearPage();
    content.append(h("p", { class: "loading", role: "status", text: "Loading\u2026" }));
    setBusy(true);
  }
  function showInvalid() {
    generation++; // late answers of earlier requests are ignored
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      /* storage unavailable */
    }
    token = null;
    clearPage();
    content.append(
      h("div", { class: "notice notice-invalid", role: "alert" },
        h("p", { "data-testid": "invalid-link", text: INVALID_LINK }))
    );
    setBusy(false);
  }
  function errorText(requestId, what) {
    return requestId
      ? [`Could not load ${what} (request id `, h("code", { text: requestId }), "). Try again in a moment."]
      : [`Could not load ${what}. Check your connection and try again in a moment.`];
  }
  function showError(requestId) {
    const gen = generation;
    clearPage();
    const retry = h("button", { type: "button", class: "button", text: "Try again" });
    retry.addEventListener("click", () => {
      if (gen === generation) start();
    });
    content.append(
      h("div", { class: "notice notice-error", role: "alert" },
        h("p", { "data-testid": "load-error", "data-request-id": requestId || null }, errorText(requestId, "your usage")),
        retry)
    );
    setBusy(false);
  }

  /* ---------- token and requests ---------- */

  const endpoint =
    document.querySelector('meta[name="meterline-graphql"]')?.getAttribute("content") || "/graphql";
  let token = null;
  let generation = 0;

  /** The fragment's token (then removed from the address bar at once), else the stored one. */
  function readToken() {
    let fromLink = null;
    if (location.hash) {
      const params = new URLSearchParams(location.hash.slice(1));
      fromLink = params.get("token") || null;
      history.replaceState(null, "", location.pathname + location.search);
    }
    try {
      if (fromLink) sessionStorage.setItem(TOKEN_KEY, fromLink);
      else return sessionStorage.getItem(TOKEN_KEY);
    } catch {
      /* storage unavailable: the token lives in this page only */
    }
    return fromLink || token;
  }

  async function request(query, variables) {
    let response;
    try {
      const init = {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: "Bearer " + token },
        body: JSON.stringify({ query, variables }),
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      };
      if (typeof AbortSignal !== "undefined" && AbortSignal.timeout) {
        init.signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
      }
      response = await fetch(endpoint, init);
    } catch {
      return { kind: "failed", requestId: null };
    }
    const requestId = response.headers.get("x-request-id");
    if (response.status === 401) return { kind: "unauthorized" };
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok || !body || typeof body !== "object") return { kind: "failed", requestId };
    return {
      kind: "ok",
      requestId,
      data: body.data && typeof body.data === "object" ? body.data : null,
      errors: Array.isArray(body.errors) ? body.errors : [],
    };
  }

  const errorField = (error) => (error && Array.isArray(error.path) ? error.path[0] : null);
  const errorRequestId = (error, fallback) =>
    (error && error.extensions && error.extensions.requestId) || fallback || null;

  function start() {
    const gen = ++generation;
    token = readToken();
    if (!token) {
      showInvalid();
      return;
    }
    showLoading();
    loadPortal(gen);
  }

  async function loadPortal(gen) {
    const answer = await request(PORTAL_QUERY, {});
    if (gen !== generation) return;
    if (answer.kind === "unauthorized") return showInvalid();
    if (answer.kind !== "ok") return showError(answer.requestId);
    const { data, errors } = answer;
    const fatal = errors.find((e) => errorField(e) !== "upcomingInvoice");
    if (fatal || !data || !data.usageLimits || !Array.isArray(data.usageHistory) || !Array.isArray(data.paymentHistory)) {
      return showError(errorRequestId(fatal, answer.requestId));
    }
    let events;
    try {
      clearPage();
      events = render(data, errors.find((e) => errorField(e) === "upcomingInvoice") || null);
    } catch {
      return showError(answer.requestId);
    }
    setBusy(false);
    mark("meterline:rendered");
    loadEvents(gen, events, null);
  }

  /** A User Timing mark (bench.portal reads them): when sections 1-6, then the events, show. */
  function mark(name) {
    if (window.performance && performance.mark && !performance.getEntriesByName(name).length) {
      performance.mark(name);
    }
  }

  /* ---------- page ---------- */

  function render(data, invoiceError) {
    const limits = data.usageLimits;
    const meters = Array.isArray(limits.meters) ? limits.meters : [];
    renderPlan(limits);
    const banners = renderBanners(limits, meters, data.monthlySummary);
    content.append(
      banners,
      renderMeters(limits, meters, data.monthlySummary),
      renderUpcoming(data.upcomingInvoice, invoiceError),
      renderHistory(meters, data.usageHistory, data.monthlySummary),
      renderPayments(data.paymentHistory)
    );
    const events = renderEventsSection();
    content.append(events.section);
    return events;
  }

  function pill(text, tone, attrs) {
    return h("span", { class: `pill pill-${tone}`, ...attrs, text });
  }

  function renderPlan(limits) {
    const [statusText, tone] = limits.subscriptionStatus
      ? own(SUBSCRIPTION_STATUSES, limits.subscriptionStatus) || [String(limits.subscriptionStatus), "neutral"]
      : ["No subscription", "neutral"];
    const line = h("p", { class: "plan-line" },
      h("span", { class: "tier", "data-testid": "tier", "data-tier": limits.tier, text: `${tierName(limits.tier)} plan` }),
      h("span", { class: "visually-hidden", text: ", subscription: " }),
      pill(statusText, tone, {
        "data-testid": "subscription-status",
        "data-status": limits.subscriptionStatus || "NONE",
      })
    );
    plan.append(line);
    if (limits.scheduledTier) {
      const when = limits.scheduledTierEffectiveAt
        ? `from ${formatDate(limits.scheduledTierEffectiveAt)}`
        : "from the next billing period";
      plan.append(
        h("p", { class: "scheduled" },
          h("span", { class: "scheduled-label", text: "Scheduled change: " }),
          h("span", {
            "data-testid": "scheduled-change",
            "data-scheduled-tier": limits.scheduledTier,
            "data-effective-at": limits.scheduledTierEffectiveAt || null,
            text: `${tierName(limits.scheduledTier)} ${when}`,
          }),
          limits.scheduledTier === "FREE" ? " \u2014 the subscription ends then." : null)
      );
    }
  }

  /** Meters whose limit is reached while usage beyond it is refused. */
  const atCap = (limits, m) =>
    Boolean(limits.hardCap) && m.included != null && m.included > 0 && m.used >= m.included;

  function renderBanners(limits, meters, summary) {
    const box = h("div", { class: "banners" });
    const banner = (testid, tone, role, text) =>
      box.append(h("div", { class: `banner banner-${tone}`, role, "data-testid": testid },
        h("p", { class: "banner-text", text })));

    if (limits.billingStatus === "RESTRICTED") {
      banner("banner-restricted", "bad", "alert",
        "Recording is refused until the invoice is paid.");
    }
    if (limits.billingStatus === "PAST_DUE") {
      const until = limits.graceEndsAt
        ? `Recording continues until ${formatDateTime(limits.graceEndsAt)}; pay the open invoice before then.`
        : "Pay the open invoice to keep recording.";
      banner("banner-past-due", "warn", "alert", `Payment is past due. ${until}`);
      box.lastElementChild.setAttribute("data-grace-ends-at", limits.graceEndsAt || "");
    }
    const capped = meters.filter((m) => atCap(limits, m));
    if (capped.length) {
      banner("banner-cap", "bad", "alert",
        `Your plan's limit is reached for ${LIST.format(capped.map((m) => eventName(m.eventType)))}: ` +
          "further usage is refused until next month or an upgrade.");
      box.lastElementChild.setAttribute("data-event-types", capped.map((m) => m.eventType).join(" "));
    }
    const over = limits.hardCap ? [] : meters.filter((m) => m.overageQuantity > 0);
    if (over.length) {
      const units = over.reduce((sum, m) => sum + m.overageQuantity, 0);
      const cost = summary && summary.totalOverageCost
        ? summary.totalOverageCost
        : { amount: sumDecimals(over.map((m) => m.overageCost.amount)), currency: over[0].overageCost.currency };
      banner("banner-overage", "warn", "status",
        `You have used more than your plan includes: ${plural(units, "unit", "units")} beyond the allowance ` +
          `are billed at the unit price (total overage ${money(cost)} this month).`);
      box.lastElementChild.setAttribute("data-overage-units", String(units));
      box.lastElementChild.setAttribute("data-overage-cost", String(cost.amount));
    }
    return box;
  }

  function section(id, title, ...children) {
    const headingId = `${id}-heading`;
    return h("section", { class: "section", id, "aria-labelledby": headingId },
      h("h2", { id: headingId, text: title }), children);
  }

  function renderMeters(limits, meters, summary) {
    const title = summary && summary.month ? `Usage in ${formatMonth(summary.month)}` : "Usage this month";
    const grid = h("ul", { class: "meters", role: "list", "data-testid": "meters" }, meters.map((m) => meterCard(limits, m)));
    return section("usage", title,
      meters.length ? grid : h("p", { class: "muted", text: "No meters to show." }));
  }

  function meterCard(limits, m) {
    const name = eventName(m.eventType);
    const unlimited = m.included == null;
    const notIncluded = !unlimited && m.included === 0 && Boolean(limits.hardCap);
    const capped = atCap(limits, m);
    const over = Boolean(m.exceeded) || capped;
    const pct = typeof m.percentUsed === "number" ? m.percentUsed : null;
    const tone = over ? "over" : pct != null && pct >= 80 ? "near" : "ok";

    const usedText = count(m.used);
    const includedText = unlimited ? "\u221e" : notIncluded ? "not included" : count(m.included);
    let valueText;
    if (unlimited) valueText = `${usedText} used, unlimited`;
    else if (notIncluded) valueText = `${usedText} used, not included in the plan`;
    else if (pct == null) valueText = `${usedText} of ${includedText} used`;
    else valueText = `${usedText} of ${includedText} used (${percent(pct)})`;

    const fill = h("div", { class: "bar-fill" });
    fill.style.width = `${Math.max(0, Math.min(100, pct == null ? (unlimited ? 0 : m.used > 0 ? 100 : 0) : pct))}%`;
    const bar = h("div", {
      class: `bar bar-${tone}${unlimited ? " bar-unlimited" : ""}`,
      role: "progressbar",
      "aria-label": `${name} usage`,
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      // ARIA keeps the value within min..max; the real figure is in aria-valuetext.
      "aria-valuenow": pct == null ? null : String(Math.max(0, Math.min(100, pct))),
      "aria-valuetext": valueText,
    }, fill);

    let badge = null;
    if (over) {
      badge = h("span", { class: "badge badge-over", "data-testid": "over-limit-badge", text: "Over limit" });
    }

    const row = (label, testid, value, alarm) =>
      h("div", { class: "stat" }, h("dt", { text: label }),
        h("dd", { "data-testid": testid, class: alarm ? "alarm" : null }, value));

    return h("li", {
      class: `meter meter-${tone}`,
      "data-testid": `meter-${m.eventType}`,
      "data-event-type": m.eventType,
      "data-used": String(m.used),
      "data-included": unlimited ? "unlimited" : String(m.included),
      "data-remaining": m.remaining == null ? "unlimited" : String(m.remaining),
      "data-percent": pct == null ? "" : String(pct),
      "data-exceeded": String(Boolean(m.exceeded)),
      "data-over-limit": String(over),
      "data-overage-units": String(m.overageQuantity),
      "data-overage-cost": m.overageCost ? String(m.overageCost.amount) : "",
      "data-unit-price": m.unitPrice ? String(m.unitPrice.amount) : "",
      "data-currency": m.overageCost ? String(m.overageCost.currency) : "",
    },
      h("div", { class: "meter-head" }, h("h3", { class: "meter-name", text: name }), badge),
      h("p", { class: "meter-figures" },
        h("span", { class: "used", "data-testid": "used", text: usedText }),
        h("span", { class: "of", text: notIncluded ? " \u00b7 " : " of " }),
        h("span", {
          class: "included",
          "data-testid": "included",
          title: unlimited ? "unlimited" : null,
          text: includedText,
        })),
      h("div", { class: "meter-bar" },
        bar,
        h("span", { class: "percent", "data-testid": "percent", "aria-hidden": "true",
          text: pct == null ? (unlimited ? "Unlimited" : "\u2014") : percent(pct) })),
      h("dl", { class: "stats" },
        row("Remaining", "remaining", unlimited ? "Unlimited" : count(m.remaining)),
        row("Overage", "overage-units", plural(m.overageQuantity, "unit", "units"), m.overageQuantity > 0),
        row("Overage cost", "overage-cost", money(m.overageCost), m.overageQuantity > 0),
        limits.hardCap ? null : row("Unit price", "unit-price", money(m.unitPrice)))
    );
  }

  /** A table; a "stack-table" is restyled on narrow screens, so it states its roles (some
      browsers drop a table's semantics when its display changes). */
  function table(caption, captionHidden, headers, rows, attrs) {
    const stacked = /\bstack-table\b/.test(attrs.class || "");
    const role = (r) => (stacked ? r : null);
    return h("div", { class: "table-wrap" },
      h("table", { ...attrs, role: role("table") },
        h("caption", { class: captionHidden ? "visually-hidden" : null, text: caption }),
        h("thead", { role: role("rowgroup") }, h("tr", { role: role("row") }, headers.map(([label, cls]) =>
          h("th", { scope: "col", role: role("columnheader"), class: cls || null, text: label })))),
        h("tbody", { role: role("rowgroup") }, rows)));
  }

  function renderUpcoming(invoice, error) {
    const box = section("upcoming", "Upcoming invoice");
    box.setAttribute("data-testid", "upcoming-invoice");
    const reason = error && error.extensions ? error.extensions.reason : null;
    if (reason === "STRIPE_NOT_CONFIGURED") {
      box.setAttribute("data-state", "not-configured");
      box.append(h("p", { class: "muted", text: "Billing is not connected to Stripe here, so there is no upcoming invoice to show." }));
      return box;
    }
    if (error) {
      box.setAttribute("data-state", "unavailable");
      box.append(h("p", { class: "muted", text: "The upcoming invoice is not available right now. Try again in a moment." }));
      return box;
    }
    if (!invoice) {
      box.setAttribute("data-state", "none");
      box.append(h("p", { class: "muted", text: "No upcoming invoice: the company has no paid subscription." }));
      return box;
    }
    box.setAttribute("data-state", "ok");
    const lines = Array.isArray(invoice.lines) ? invoice.lines : [];
    box.append(
      h("div", { class: "invoice-summary" },
        h("p", { class: "invoice-amount" },
          h("span", { class: "label", text: "Amount due" }),
          h("span", {
            class: "amount",
            "data-testid": "upcoming-amount",
            "data-amount": String(invoice.amountDue.amount),
            "data-currency": String(invoice.amountDue.currency),
            text: money(invoice.amountDue),
          })),
        h("p", { class: "invoice-period" },
          h("span", { class: "label", text: "Period" }),
          h("span", {
            "data-testid": "upcoming-period",
            "data-period-start": invoice.periodStart,
            "data-period-end": invoice.periodEnd,
            text: formatPeriod(invoice.periodStart, invoice.periodEnd),
          }))),
      lines.length
        ? table("Lines of the upcoming invoice", true,
            [["Description"], ["Quantity", "num"], ["Amount", "num"]],
            lines.map((line) => h("tr", {
              "data-testid": "upcoming-line",
              "data-amount": String(line.amount.amount),
              "data-quantity": line.quantity == null ? null : String(line.quantity),
            },
              h("td", { text: line.description || "\u2014" }),
              h("td", { class: "num", text: line.quantity == null ? "\u2014" : count(line.quantity) }),
              h("td", { class: "num", text: money(line.amount) }))),
            { class: "data-table invoice-lines", "data-testid": "upcoming-lines" })
        : h("p", { class: "muted", text: "The invoice has no lines yet." }),
      h("p", { class: "note", text: "A preview: usage recorded until the period ends is still added." })
    );
    return box;
  }

  /* ---------- history ---------- */

  function renderHistory(meters, history, summary) {
    const last = (summary && summary.month) || (history[0] && history[0].month) || null;
    const keys = monthKeys(last, 12);
    const types = meters.map((m) => m.eventType);
    const values = new Map(); // "YYYY-MM-01" -> Map(eventType -> used)
    for (const month of history) {
      const key = monthKey(month.month);
      if (!key) continue;
      const perType = values.get(key) || new Map();
      for (const m of month.meters || []) {
        perType.set(m.eventType, (perType.get(m.eventType) || 0) + (Number(m.used) || 0));
        if (!types.includes(m.eventType)) types.push(m.eventType);
      }
      values.set(key, perType);
    }
    const value = (key, type) => (values.get(key) && values.get(key).get(type)) || 0;
    const range = `${formatMonth(keys[0])} \u2013 ${formatMonth(keys[keys.length - 1])}`;

    const charts = h("div", { class: "charts", "data-testid": "history-chart" },
      types.map((type) => chart(type, keys, keys.map((k) => value(k, type)))));

    const rows = keys.slice().reverse().map((key) =>
      h("tr", { "data-month": key },
        h("th", { scope: "row", text: formatMonth(key) }),
        types.map((type) => h("td", {
          class: "num", "data-event-type": type, "data-value": String(value(key, type)), text: count(value(key, type)),
        }))));
    const tableWrap = table(`Usage per month, ${range}`, true,
      [["Month"], ...types.map((t) => [eventName(t), "num"])], rows,
      { class: "data-table history-table", "data-testid": "history-table" });
    // It may scroll sideways on a narrow screen: a keyboard can scroll a focusable region.
    setAttrs(tableWrap, { tabindex: "0", role: "region", "aria-label": "Usage per month, table" });
    const details = h("details", { class: "history-details" }, h("summary", { text: "Show as table" }), tableWrap);

    return section("history", "Usage history",
      h("p", { class: "muted section-intro", text: `Units recorded per month, ${range}.` }), charts, details);
  }

  function chart(type, keys, series) {
    const W = 220, H = 124, left = 4, right = 216, top = 20, bottom = 100;
    const max = Math.max(0, ...series);
    const scaleMax = Math.max(1, max);
    const slot = (right - left) / series.length;
    const barWidth = Math.max(4, slot * 0.62);
    const titleId = nextId("chart-title");
    const descId = nextId("chart-desc");
    const name = eventName(type);
    const total = series.reduce((a, b) => a + b, 0);
    const peakIndex = series.indexOf(max);
    const desc = max > 0
      ? `Highest ${count(max)} in ${formatMonth(keys[peakIndex])}; ${count(series[series.length - 1])} in ` +
        `${formatMonth(keys[keys.length - 1])}; ${count(total)} in the 12 months.`
      : "No usage in the 12 months.";

    const bars = series.map((v, i) => {
      const x = left + i * slot + (slot - barWidth) / 2;
      const current = i === series.length - 1;
      const label = `${formatMonth(keys[i])}: ${count(v)}`;
      if (v <= 0) {
        return svg("rect", { class: "bar-zero", x: x.toFixed(2), y: bottom - 2, width: barWidth.toFixed(2), height: 2,
          "data-month": keys[i], "data-value": "0" }, svg("title", { text: label }));
      }
      const height = Math.max(2, (v / scaleMax) * (bottom - top));
      return svg("rect", {
        class: current ? "bar-value bar-current" : "bar-value",
        x: x.toFixed(2), y: (bottom - height).toFixed(2), width: barWidth.toFixed(2), height: height.toFixed(2),
        rx: 1.5, "data-month": keys[i], "data-value": String(v),
      }, svg("title", { text: label }));
    });
    const initials = keys.map((k, i) =>
      svg("text", { class: "axis-label", x: (left + i * slot + slot / 2).toFixed(2), y: bottom + 14, "text-anchor": "middle",
        text: MONTH_NARROW.format(parseDate(k)) }));

    return h("figure", { class: "chart", "data-event-type": type, "data-max": String(max) },
      h("figcaption", { class: "chart-name", "aria-hidden": "true", text: name }),
      svg("svg", {
        viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${titleId} ${descId}`, class: "chart-svg",
        focusable: "false",
      },
        svg("title", { id: titleId, text: `${name} per month, ${formatMonth(keys[0])} to ${formatMonth(keys[keys.length - 1])}` }),
        svg("desc", { id: descId, text: desc }),
        svg("line", { class: "grid-line", x1: left, x2: right, y1: top, y2: top }),
        svg("text", { class: "max-label", x: left, y: top - 6, text: max > 0 ? `max ${count(max)}` : "no usage" }),
        bars,
        svg("line", { class: "baseline", x1: left, x2: right, y1: bottom + 0.5, y2: bottom + 0.5 }),
        initials)
    );
  }

  /* ---------- payments ---------- */

  function renderPayments(invoices) {
    if (!invoices.length) {
      return section("payments", "Payment history",
        h("p", { class: "muted", "data-testid": "payments-empty", text: "No invoices yet." }));
    }
    const rows = invoices.map((inv) => {
      const [statusText, tone] = own(INVOICE_STATUSES, inv.status) || [String(inv.status), "neutral"];
      const number = inv.number || "\u2014";
      const hosted = safeUrl(inv.hostedInvoiceUrl);
      const pdf = safeUrl(inv.invoicePdf);
      const link = (href, text, label) => h("a", {
        href, target: "_blank", rel: "noopener noreferrer", "aria-label": label, text,
      });
      const links = [
        hosted ? link(hosted, "View invoice", `View invoice ${inv.number || ""} (opens in a new tab)`.replace("  ", " ")) : null,
        pdf ? link(pdf, "PDF", `PDF of invoice ${inv.number || ""} (opens in a new tab)`.replace("  ", " ")) : null,
      ].filter(Boolean);
      return h("tr", {
        role: "row",
        "data-testid": "payment-row",
        "data-invoice-id": inv.id,
        "data-status": inv.status,
        "data-amount-due": String(inv.amountDue.amount),
        "data-amount-paid": inv.amountPaid ? String(inv.amountPaid.amount) : null,
        "data-currency": String(inv.amountDue.currency),
        "data-period-start": inv.periodStart || null,
        "data-period-end": inv.periodEnd || null,
        "data-paid-at": inv.paidAt || null,
      },
        h("td", { role: "cell", class: "c-number", text: number }),
        h("td", { role: "cell", class: "c-period", text: formatPeriod(inv.periodStart, inv.periodEnd) }),
        h("td", { role: "cell", class: "num c-amount", text: money(inv.amountDue) }),
        h("td", { role: "cell", class: "c-status" }, pill(statusText, tone, {
          title: inv.paidAt ? `Paid on ${formatDate(inv.paidAt)}` : null,
        })),
        h("td", { role: "cell", class: "c-docs" },
          links.length ? links : h("span", { class: "muted", text: "\u2014" })));
    });
    return section("payments", "Payment history",
      table("Invoices, newest first", true,
        [["Invoice"], ["Period"], ["Amount", "num"], ["Status"], ["Documents"]], rows,
        { class: "data-table stack-table payments-table", "data-testid": "payments" }));
  }

  /* ---------- events ---------- */

  function renderEventsSection() {
    const wrap = table("Recorded usage events, newest first", true,
      [["Time (UTC)"], ["Event type"], ["Quantity", "num"], ["Idempotency key"], ["Sync state"]], [],
      { class: "data-table stack-table events-table", "data-testid": "events" });
    wrap.hidden = true;
    const tableEl = wrap.querySelector("table");
    const tbody = tableEl.querySelector("tbody");
    const status = h("p", { class: "muted events-status", role: "status", text: "Loading events\u2026" });
    const footer = h("div", { class: "events-footer" });
    const box = section("events", "Recent usage events", wrap, status, footer);
    return { section: box, wrap, tbody, status, footer, table: tableEl, button: null, shown: 0 };
  }

  function eventRow(node) {
    const [stateText, stateHint] = own(SYNC_STATES, node.syncState) || [String(node.syncState), null];
    return h("tr", {
      role: "row",
      "data-testid": "event-row",
      "data-event-id": node.id,
      "data-event-type": node.eventType,
      "data-quantity": String(node.quantity),
      "data-occurred-at": node.occurredAt,
      "data-sync-state": node.syncState,
    },
      h("td", { role: "cell", class: "c-time" },
        h("time", { datetime: node.occurredAt, text: formatDateTime(node.occurredAt) })),
      h("td", { role: "cell", class: "c-type", text: eventName(node.eventType) }),
      h("td", { role: "cell", class: "num c-qty", text: count(node.quantity) }),
      node.idempotencyKey
        ? h("td", { role: "cell", class: "c-key" }, h("code", { text: node.idempotencyKey }))
        : h("td", { role: "cell", class: "c-key c-empty" }, h("span", { class: "muted", text: "\u2014" })),
      h("td", { role: "cell", class: "c-sync" },
        h("span", { class: `sync sync-${String(node.syncState).toLowerCase()}`, title: stateHint, text: stateText })));
  }

  async function loadEvents(gen, view, after) {
    if (view.button) {
      // aria-disabled, not disabled: a disabled button would lose the keyboard focus.
      view.button.setAttribute("aria-disabled", "true");
      view.button.textContent = "Loading\u2026";
      view.table.setAttribute("aria-busy", "true");
    }
    const previousError = view.section.querySelector(".events-error");
    if (previousError) previousError.remove();

    const answer = await request(EVENTS_QUERY, { after });
    if (gen !== generation) return;
    if (answer.kind === "unauthorized") return showInvalid();
    view.table.removeAttribute("aria-busy");
    const connection = answer.kind === "ok" && answer.data ? answer.data.usageEvents : null;
    const error = answer.kind === "ok" ? answer.errors[0] : null;
    if (!connection || error || !Array.isArray(connection.edges)) {
      const requestId = error ? errorRequestId(error, answer.requestId) : answer.requestId;
      view.status.textContent = "";
      const notice = h("div", { class: "notice notice-error events-error", role: "alert" },
        h("p", { "data-testid": "load-error", "data-request-id": requestId || null }, errorText(requestId, "the events")));
      if (view.button) {
        view.button.removeAttribute("aria-disabled");
        view.button.textContent = "Load more";
      } else {
        const retry = h("button", { type: "button", class: "button", text: "Try again" });
        retry.addEventListener("click", () => {
          if (gen === generation) loadEvents(gen, view, after);
        });
        notice.append(retry);
      }
      view.footer.before(notice);
      return;
    }

    const rows = connection.edges.filter((e) => e && e.node).map((e) => eventRow(e.node));
    view.tbody.append(...rows);
    mark("meterline:events");
    view.shown += rows.length;
    if (view.shown > 0) view.wrap.hidden = false;
    view.status.textContent = view.shown === 0
      ? "No usage events yet."
      : after === null ? "" : `${plural(rows.length, "more event", "more events")} loaded.`;
    view.status.classList.toggle("visually-hidden", view.shown > 0);

    const info = connection.pageInfo || {};
    if (info.hasNextPage && info.endCursor) {
      addButton(gen, view, info.endCursor);
    } else if (view.button) {
      const hadFocus = document.activeElement === view.button;
      view.button.remove();
      view.button = null;
      if (hadFocus && rows.length) {
        const cell = rows[0].cells[0];
        cell.setAttribute("tabindex", "-1");
        cell.focus();
      }
    }
  }

  function addButton(gen, view, cursor) {
    if (!view.button) {
      view.button = h("button", { type: "button", class: "button", "data-testid": "load-more" });
      view.button.addEventListener("click", () => {
        if (gen === generation && view.button.getAttribute("aria-disabled") !== "true") {
          loadEvents(gen, view, view.button.dataset.cursor || null);
        }
      });
      view.footer.append(view.button);
    }
    view.button.dataset.cursor = cursor || "";
    view.button.removeAttribute("aria-disabled");
    view.button.textContent = "Load more";
  }

  /* ---------- start ---------- */

  window.addEventListener("hashchange", () => {
    if (new URLSearchParams(location.hash.slice(1)).get("token")) start();
  });
  start();
})();
