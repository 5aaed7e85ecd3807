// The participant page: asks the server for the current question, shows it, sends the answer, shows the next one.
// The server keeps all state, so a reload (or another tab) continues at the same question; answers that cannot be
// sent are retried until the server confirms them (it stores each answer once, however often it is sent).
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const app = $('app');
  const SCREENS = ['intro', 'question', 'done', 'closed'];
  const AB_KEYS = { a: 0, 1: 0, b: 1, 2: 1, s: 2, 3: 2, '=': 2 };
  let current = null; // the last state from the server
  let busy = false; // a request is on its way
  let ready = false; // the images of the current question are loaded

  function show(screen) {
    for (const name of SCREENS) $(name).hidden = name !== screen;
    app.dataset.screen = screen;
  }

  function banner(text, isError) {
    const box = $('banner');
    box.hidden = !text;
    box.textContent = text || '';
    box.classList.toggle('error', Boolean(isError));
  }

  function progress(position, total) {
    $('progress-box').hidden = false;
    const shown = Math.min(position + 1, total);
    $('progress-text').textContent = position >= total ? 'Done: ' + total + ' of ' + total
      : 'Question ' + shown + ' of ' + total;
    $('progress').max = total;
    $('progress').value = position;
    app.dataset.position = String(position);
    app.dataset.total = String(total);
  }

  async function request(method, path, body) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 15000);
    try {
      const response = await fetch(path, {
        method: method,
        headers: body ? { 'Content-Type': 'application/json' } : {},
        body: body ? JSON.stringify(body) : undefined,
        credentials: 'same-origin',
        cache: 'no-store',
        signal: controller.signal,
      });
      let data = null;
      try { data = await response.json(); } catch (e) { data = null; }
      return { status: response.status, data: data };
    } finally {
      clearTimeout(timer);
    }
  }

  // Retry on network errors and server errors (5xx) with a growing delay; any other answer is returned.
  async function persistent(method, path, body) {
    let delay = 1000;
    for (;;) {
      try {
        const result = await request(method, path, body);
        if (result.status < 500) {
          banner(null);
          return result;
        }
      } catch (e) { /* offline or timed out: retry */ }
      banner('Connection lost. Nothing is lost: retrying in ' + delay / 1000 + ' s.', true);
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }

  function setEnabled(enabled) {
    for (const button of document.querySelectorAll('#options button, #ab-answers button')) button.disabled = !enabled;
  }

  function whenLoaded(images, done) {
    let pending = images.length;
    const one = () => { pending -= 1; if (pending === 0) done(); };
    for (const img of images) {
      if (img.complete && img.naturalWidth) one();
      else { img.addEventListener('load', one, { once: true }); img.addEventListener('error', one, { once: true }); }
    }
  }

  function render(state) {
    current = state;
    ready = false;
    app.dataset.ready = '0';
    if (state.done) {
      progress(state.total, state.total);
      show('done');
      return;
    }
    const q = state.question;
    progress(state.position, state.total);
    $('prompt').textContent = q.prompt;
    const images = [];
    const options = $('options');
    const ab = q.layout === 'ab';
    options.replaceChildren();
    options.classList.toggle('ab', ab);
    if (q.reference) {
      // The reference is the first cell of the grid, so that it sits next to the candidates on any screen.
      const figure = document.createElement('figure');
      figure.className = 'reference';
      const img = document.createElement('img');
      img.alt = 'Reference';
      img.src = q.reference;
      const caption = document.createElement('figcaption');
      caption.textContent = 'Reference';
      figure.append(img, caption);
      options.append(figure);
      images.push(img);
    }
    q.options.forEach((src, index) => {
      const key = ab ? 'AB'[index] : String(index + 1);
      const element = document.createElement(ab ? 'figure' : 'button');
      element.className = 'option';
      element.dataset.index = String(index);
      if (!ab) {
        element.type = 'button';
        element.setAttribute('aria-label', 'Image ' + key);
        element.addEventListener('click', () => choose(index));
      }
      const badge = document.createElement('span');
      badge.className = 'key';
      badge.textContent = key;
      const img = document.createElement('img');
      img.alt = 'Image ' + key;
      img.src = src;
      images.push(img);
      element.append(img, badge);
      options.append(element);
    });
    const answers = $('ab-answers');
    answers.replaceChildren();
    answers.hidden = !ab;
    if (ab) {
      q.answers.forEach((text, index) => {
        const button = document.createElement('button');
        button.type = 'button';
        button.dataset.index = String(index);
        button.textContent = text + ' (' + ['A', 'B', 'S'][index] + ')';
        button.addEventListener('click', () => choose(index));
        answers.append(button);
      });
      $('hint').textContent = 'Press A, B or S, or use the buttons.';
    } else {
      $('hint').textContent = 'Click or tap an image, or press 1 to ' + q.options.length + '.';
    }
    show('question');
    setEnabled(false);
    whenLoaded(images, () => {
      if (current !== state) return;
      ready = true;
      setEnabled(true);
      app.dataset.ready = '1';
    });
    for (const src of state.prefetch || []) new Image().src = src;
  }

  async function refresh() {
    const result = await persistent('GET', '/api/state');
    if (result.status === 401) show('intro');
    else if (result.status === 200) render(result.data);
    else banner((result.data && result.data.error) || 'Unexpected answer from the server.', true);
  }

  async function choose(index) {
    if (busy || !ready || !current || current.done) return;
    busy = true;
    setEnabled(false);
    const chosen = document.querySelector('#options [data-index="' + index + '"], #ab-answers [data-index="' + index + '"]');
    if (chosen) chosen.classList.add('chosen');
    try {
      const result = await persistent('POST', '/api/answer', { question_id: current.question.id, choice: index });
      if (result.status === 200) {
        render(result.data.state);
      } else {
        // Refused (e.g. answered meanwhile in another tab): say why and show what the server has now.
        await refresh();
        banner((result.data && result.data.error) || 'The answer was refused.', true);
      }
    } finally {
      busy = false;
    }
  }

  async function start() {
    $('start').disabled = true;
    const result = await persistent('POST', '/api/start');
    if (result.status === 200) render(result.data);
    else {
      $('closed-text').textContent = (result.data && result.data.error) || 'The study cannot be started.';
      show('closed');
    }
  }

  document.addEventListener('keydown', (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (app.dataset.screen === 'intro' && event.key === 'Enter') { start(); return; }
    if (app.dataset.screen !== 'question' || !current || current.done) return;
    const key = event.key.toLowerCase();
    let index;
    if (current.question.layout === 'ab') index = AB_KEYS[key];
    else if (/^[1-9]$/.test(key)) index = Number(key) - 1;
    if (index === undefined || index >= (current.question.layout === 'ab' ? 3 : current.question.options.length)) return;
    event.preventDefault();
    choose(index);
  });
  $('start').addEventListener('click', start);
  refresh();
})();
