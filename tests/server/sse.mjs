// Helpers for the server tests: strict SSE reading/checking, Prometheus metric lookup, polling,
// and the RSS of a process.
import assert from 'node:assert/strict';
import fs from 'node:fs';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Reads a whole text/event-stream body; returns the data payloads in order. Every event must be
// exactly "data: <payload>" followed by a blank line.
export async function readSse(res) {
  const body = await res.text();
  assert.ok(body.endsWith('\n\n'), `stream does not end with a blank line: ${JSON.stringify(body.slice(-80))}`);
  const events = body.slice(0, -2).split('\n\n');
  return events.map((e) => {
    assert.ok(e.startsWith('data: ') && !e.includes('\n'), `malformed SSE event: ${JSON.stringify(e)}`);
    return e.slice(6);
  });
}

// Checks a completed stream's events against OpenAI's chunk sequence and returns its text and
// usage: same id throughout, (chat) a role chunk first, exactly one finish_reason, then the usage
// chunk with no choices, then [DONE].
export function checkSse(events, isChat) {
  assert.equal(events.at(-1), '[DONE]', 'stream must end with [DONE]');
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
  assert.ok(chunks.length >= 3, `too few chunks: ${events.join(' | ')}`);
  const object = isChat ? 'chat.completion.chunk' : 'text_completion';
  const id = chunks[0].id;
  assert.match(id, isChat ? /^chatcmpl-/ : /^cmpl-/);
  let text = '';
  let finishAt = -1;
  chunks.forEach((ch, i) => {
    assert.equal(ch.object, object);
    assert.equal(ch.id, id);
    assert.equal(typeof ch.created, 'number');
    assert.equal(ch.model, 'demo');
    assert.ok(!ch.error, JSON.stringify(ch));
    if (i === chunks.length - 1) return;
    assert.equal(ch.choices.length, 1);
    assert.equal(ch.usage, null, 'usage is null on all but the last chunk');
    const c = ch.choices[0];
    assert.equal(c.index, 0);
    if (c.finish_reason !== null) {
      assert.equal(finishAt, -1, 'finish_reason appears once');
      finishAt = i;
    }
    if (isChat) {
      if (i === 0) assert.deepEqual(c.delta, { role: 'assistant', content: '' });
      else text += c.delta.content ?? '';
    } else {
      text += c.text;
    }
  });
  assert.equal(finishAt, chunks.length - 2, 'the finish chunk comes right before the usage chunk');
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
  return { text, usage: last.usage };
}

// The value of one sample (`name` may include labels) from /metrics, or from `text` when given.
export async function metric(server, name, text) {
  const body = text ?? (await (await fetch(`${server.base}/metrics`)).text());
  const line = body.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `metric ${name} not found`);
  return Number(line.slice(name.length + 1));
}

// Polls `cond` every 20 ms until it holds or `ms` pass (then fails naming `what`).
export async function waitFor(cond, ms, what) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await sleep(20);
  }
  assert.fail(`timed out waiting for: ${what}`);
}

export function rssBytes(pid) {
  const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  assert.ok(m, 'no VmRSS');
  return Number(m[1]) * 1024;
}
