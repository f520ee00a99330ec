// The web client in headless Chromium against the real teachback server (see run.sh, which sets
// TEACHBACK_BIN, the server's TEACHBACK_* environment, BASE_URL, WAV, SCREENSHOTS and
// EXPECTED_TRANSCRIPT).
//
// A learner opens the page (device auto-login), finds a topic in the catalogue, records the WAV
// (Chromium plays it as the microphone) with a pause, a dropped connection and a server restart
// in the middle, and
// sees the live transcript, the streamed feedback and the result. A second tab on the ranking
// page sees the learner appear live. Then the user page, a rename, the watch page opened by
// another learner through the share link, and the Korean UI. Every step is checked against the
// server's own answers, and nothing the page captured may be missing from the stored audio.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.BASE_URL;
const WAV = process.env.WAV;
const SHOTS = process.env.SCREENSHOTS;
const EXPECTED = process.env.EXPECTED_TRANSCRIPT || '';
const WAV_SECONDS = parseFloat(process.env.WAV_SECONDS || '25');
const TOPIC = 'cs.networking.tcp-vs-udp';
assert.ok(BASE && WAV && SHOTS && process.env.TEACHBACK_BIN, 'run this through run.sh');

/** Starts the server (its environment comes from run.sh) and waits until it is ready. */
async function startServer() {
  const log = fs.openSync(path.join(SHOTS, 'server.log'), 'a');
  const child = spawn(process.env.TEACHBACK_BIN, [], { stdio: ['ignore', log, log] });
  const deadline = Date.now() + 30000;
  for (;;) {
    assert.equal(child.exitCode, null, 'the server exited; see server.log');
    try {
      if ((await fetch(BASE + '/readyz')).ok) return child;
    } catch {
      // not listening yet
    }
    assert.ok(Date.now() < deadline, 'the server did not become ready');
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** SIGTERM: the server closes live sockets with 1012 and exits cleanly. */
async function stopServer(child) {
  if (child.exitCode !== null) return;
  child.kill('SIGTERM');
  const [code] = await once(child, 'exit');
  assert.equal(code, 0, 'the server did not stop cleanly');
}

const started = Date.now();
function step(name) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${name}`);
}
async function shot(page, name) {
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}
const id = (testid) => `[data-testid="${testid}"]`;

/** Calls the API from inside the page, with the learner's stored access token. */
async function api(page, url) {
  return page.evaluate(async (url) => {
    const device = JSON.parse(localStorage.getItem('teachback.device'));
    const r = await fetch(url, { headers: { Authorization: `Bearer ${device.accessToken}` } });
    return { status: r.status, body: await r.json() };
  }, url);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${WAV}%noloop`,
    '--autoplay-policy=no-user-gesture-required',
    '--no-sandbox',
  ],
});
const failures = [];
let server = await startServer();
try {
  const context = await browser.newContext({
    viewport: { width: 1100, height: 900 },
    locale: 'en-US',
    permissions: ['microphone'],
  });
  const page = await context.newPage();
  page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // Refused connections while the server restarts are expected.
    if (m.type() === 'error' && !m.text().includes('ERR_CONNECTION_REFUSED')) {
      console.log(`  console: ${m.text()}`);
    }
  });

  step('open the page: device auto-login and the catalogue');
  await page.goto(BASE + '/');
  await page.waitForFunction(() => !!localStorage.getItem('teachback.device'));
  const me = await api(page, '/api/v1/me');
  assert.equal(me.status, 200);
  await page.locator(id('user-name')).filter({ hasText: me.body.name }).waitFor();
  await page.locator(`${id('catalog')} details[data-major="cs"] > summary`).first().click();
  await page.locator('details[data-subject="cs.networking"] > summary').first().click();
  await shot(page, '01-home');
  await page.locator(`${id('catalog')} a[data-topic="${TOPIC}"]`).click();
  await page.locator(id('topic-title')).filter({ hasText: 'TCP' }).waitFor();
  assert.equal(new URL(page.url()).hash, `#/topic/${TOPIC}`);
  await page.selectOption(id('lecture-language'), 'en');

  step('a second tab follows the weekly ranking live');
  const board = await context.newPage();
  await board.goto(BASE + '/#/rankings');
  await board.locator(`${id('live-status')}[data-state="open"]`).waitFor();
  assert.equal(await board.locator(`${id('ranking-row')}.me`).count(), 0, 'not ranked yet');

  step('record: level meter, timer, pause and resume, a dropped connection');
  await page.locator(id('record')).click();
  const recordingSince = Date.now();
  await page.locator(`${id('lecture-state')}[data-state="recording"]`).waitFor();
  await page.waitForFunction(
    (sel) => parseFloat(document.querySelector(sel)?.dataset.level || '0') > 0.01,
    id('level'),
    { timeout: 15000 },
  );
  await page.waitForFunction(() => window.teachback.stats().ackedSeq >= 30, null, { timeout: 20000 });
  const timer = await page.locator(id('timer')).textContent();
  assert.match(timer, /^0:0[2-9]$/, `the timer counts recorded audio: ${timer}`);
  await page.locator(id('pause')).click();
  await page.locator(`${id('lecture-state')}[data-state="paused"]`).waitFor();
  const pausedAt = await page.evaluate(() => window.teachback.stats().bytesSent);
  await page.waitForTimeout(800);
  assert.equal(await page.evaluate(() => window.teachback.stats().bytesSent), pausedAt,
    'nothing is sent while paused');
  await page.locator(id('resume')).click();
  await page.locator(`${id('lecture-state')}[data-state="recording"]`).waitFor();
  await page.waitForTimeout(1500);
  await page.evaluate(() => window.teachback.dropConnection());
  await page.locator(`${id('connection')}[data-state="reconnecting"], ${id('connection')}[data-state="connecting"]`)
    .first().waitFor({ timeout: 5000 });
  await page.locator(`${id('connection')}[data-state="open"]`).waitFor({ timeout: 15000 });
  assert.ok((await page.evaluate(() => window.teachback.stats().reconnects)) >= 1);

  step('restart the server mid-lecture: the page resumes on the new process');
  await stopServer(server);
  await page.locator(`${id('connection')}:not([data-state="open"])`).waitFor({ timeout: 5000 });
  await page.waitForTimeout(1000); // the microphone keeps capturing into the page's buffer
  server = await startServer();
  await page.locator(`${id('connection')}[data-state="open"]`).waitFor({ timeout: 20000 });
  await page.locator(`${id('lecture-state')}[data-state="recording"]`).waitFor();
  assert.ok((await page.evaluate(() => window.teachback.stats().reconnects)) >= 2);
  await page.locator(id('live-transcript')).filter({ hasText: /\w{3,}/ }).waitFor({ timeout: 30000 });
  await shot(page, '02-recording');

  step('finish once the recording has played; feedback streams, then the result');
  // Chromium plays the WAV once (%noloop) from when the microphone opens.
  await page.waitForTimeout(Math.max(0, recordingSince + WAV_SECONDS * 1000 + 500 - Date.now()));
  const recorded = await page.evaluate(() => window.teachback.stats().bytesSent);
  assert.ok(recorded >= (WAV_SECONDS - 4) * 32000, `only ${recorded} bytes recorded`);
  await page.locator(id('finish')).click();
  await page.locator(`${id('lecture-state')}[data-state="finished"]`).waitFor({ timeout: 20000 });
  // Feedback is shown while it streams, before the score exists.
  await page.locator(id('feedback')).filter({ hasText: /\w{3,}/ }).waitFor({ timeout: 60000 });
  assert.equal(await page.locator(id('score')).count(), 0, 'feedback streams before the score');
  await shot(page, '03-feedback-streaming');
  await page.locator(id('score')).waitFor({ timeout: 60000 });
  const stats = await page.evaluate(() => window.teachback.stats());
  const lecture = await api(page, `/api/v1/lectures/${stats.lectureId}`);
  assert.equal(lecture.status, 200);
  const l = lecture.body;
  assert.equal(l.processing, 'graded');
  assert.equal(await page.locator(id('score')).textContent(), String(l.grade.score));
  for (const part of ['accuracy', 'completeness', 'clarity', 'structure']) {
    const text = await page.locator(id(`subscore-${part}`)).textContent();
    assert.ok(text.includes(String(l.grade.subScores[part])), `${part}: ${text}`);
  }
  assert.equal(await page.locator(`${id('strengths')} li`).count(), l.grade.strengths.length);
  const transcript = await page.locator(id('transcript')).textContent();
  if (EXPECTED) assert.ok(transcript.includes(EXPECTED), `transcript: ${transcript}`);
  assert.ok(l.transcript.length > 0);
  step(`score ${l.grade.score}; transcript: ${transcript}`);

  step('nothing captured was lost or doubled across the pause, the drop and the restart');
  const storedPcm = l.segments.reduce((sum, s) => sum + s.bytes - 44, 0);
  assert.equal(storedPcm, stats.bytesSent,
    `stored ${storedPcm} bytes of PCM, the page captured and sent ${stats.bytesSent}`);
  const lastSeq = Math.max(...l.segments.map((s) => s.lastSeq));
  assert.equal(lastSeq, stats.chunks);
  await shot(page, '04-result');

  step('rate the feedback');
  await page.locator(id('rate-4')).click();
  await page.locator(`${id('rating')}[data-rating="4"]`).waitFor();
  assert.equal((await api(page, `/api/v1/lectures/${stats.lectureId}`)).body.rating, 4);

  step('the ranking tab updated live, with the learner highlighted');
  const myRow = board.locator(`${id('ranking-row')}.me`);
  await myRow.waitFor({ timeout: 15000 });
  assert.equal(await myRow.getAttribute('data-points'), String(l.grade.score));
  assert.equal(await myRow.getAttribute('data-rank'), '1');
  await board.locator(id('my-rank')).filter({ hasText: /top/i }).waitFor();
  await shot(board, '05-rankings');

  step('share the lecture');
  await page.locator(id('share')).click();
  const shareLink = await page.locator(id('share-link')).inputValue();
  assert.match(shareLink, new RegExp(`/#/watch/${stats.lectureId}\\?share=`));

  step('the user page: stats, history, trend chart, rename');
  await page.goto(BASE + '/#/me');
  await page.locator(id('stat-graded')).filter({ hasText: '1' }).waitFor();
  const myStats = (await api(page, '/api/v1/me/stats')).body;
  assert.equal(myStats.lecturesGraded, 1);
  assert.ok((await page.locator(id('stat-best')).textContent()).includes(String(myStats.bestScore)));
  assert.equal(await page.locator(`svg${id('trend-chart')} circle`).count(), myStats.trend.length);
  await page.locator(`${id('history')} [data-lecture-id="${stats.lectureId}"]`).waitFor();
  const newName = `Tester${Date.now() % 100000}`;
  await page.fill(id('rename-input'), newName);
  await page.locator(id('rename-submit')).click();
  await page.locator(id('user-name')).filter({ hasText: newName }).waitFor();
  assert.equal((await api(page, '/api/v1/me')).body.name, newName);
  await page.fill(id('rename-input'), 'x');
  await page.locator(id('rename-submit')).click();
  await page.locator(id('rename-error')).filter({ hasText: /\w/ }).waitFor();
  await shot(page, '06-user-page');

  step('study reminders: opt in to the weekly digest with quiet hours');
  await page.locator(id('nudges')).waitFor();
  await page.locator(id('nudges-off')).waitFor(); // this server has no delivery channel
  await page.check(id('nudge-weekly'));
  await page.check(id('nudge-quiet'));
  await page.selectOption(id('nudge-quiet-start'), '22');
  await page.selectOption(id('nudge-quiet-end'), '7');
  await page.selectOption(id('nudge-timezone'), 'Asia/Seoul');
  await page.locator(id('nudges-save')).click();
  await page.locator(id('nudges-saved')).waitFor();
  const nudges = (await api(page, '/api/v1/me/notifications')).body;
  assert.equal(nudges.weeklyDigest, true);
  assert.equal(nudges.dailyReminder, false);
  assert.equal(nudges.timeZone, 'Asia/Seoul');
  assert.deepEqual(nudges.quietHours, { start: 22, end: 7 });
  await page.locator(id('nudges')).screenshot({ path: path.join(SHOTS, '06b-study-reminders.png') });

  step('another learner watches the shared lecture');
  const viewer = await browser.newContext({ viewport: { width: 420, height: 900 }, locale: 'en-US' });
  const watch = await viewer.newPage();
  watch.on('pageerror', (e) => failures.push(`watch page error: ${e.message}`));
  await watch.goto(shareLink);
  await watch.locator(id('score')).filter({ hasText: String(l.grade.score) }).waitFor({ timeout: 20000 });
  assert.ok((await watch.locator(id('watch-transcript')).textContent()).length > 0);
  assert.ok((await watch.locator(id('watch-feedback')).textContent()).length > 0);
  await shot(watch, '07-watch-mobile');

  step('the Korean UI');
  await page.locator(id('lang-toggle')).click();
  await page.waitForFunction(() => document.documentElement.lang === 'ko');
  await page.locator('body').filter({ hasText: /[가-힣]/ }).waitFor();
  await board.reload();
  await board.locator(id('lang-toggle')).waitFor();
  await shot(page, '08-user-page-ko');
  await page.goto(BASE + '/#/rankings');
  await page.locator(id('my-rank')).filter({ hasText: /[가-힣]/ }).waitFor();
  await shot(page, '09-rankings-ko');
} finally {
  await browser.close();
  await stopServer(server);
}
assert.deepEqual(failures, [], 'the pages threw errors');
step('passed');
