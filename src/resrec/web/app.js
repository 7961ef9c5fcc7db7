// The resrec web page: search and rate movies, then ask the API for recommendations.
// Plain JavaScript, no build step. All text goes in through textContent (no HTML injection).
"use strict";

const state = { scale: { low: 1, high: 5, step: 1 }, rated: new Map() };
const TERMS = ["user_bias", "movie_bias", "dot", "side"];

const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(detail + (body.hint ? ` (${body.hint})` : ""));
  }
  return body;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

function movieLabel(movie) {
  const title = movie.title || `movie_id ${movie.movie_id}`;
  return movie.genres.length ? `${title} · ${movie.genres.join(", ")}` : title;
}

function scaleValues() {
  const { low, high, step } = state.scale;
  const values = [];
  for (let v = high; v >= low - 1e-9; v -= step) values.push(Math.round(v * 100) / 100);
  return values;
}

// -- searching and rating --------------------------------------------------------------

async function search(event) {
  event.preventDefault();
  const text = $("search").value.trim();
  const list = $("search-results");
  list.replaceChildren();
  if (!text) return;
  try {
    const movies = await api(`/api/movies/search?q=${encodeURIComponent(text)}&limit=10`);
    if (!movies.length) list.append(element("li", "hint", "No title matches."));
    for (const movie of movies) list.append(searchResult(movie));
  } catch (error) {
    setStatus(`Search failed: ${error.message}`, true);
  }
}

function searchResult(movie) {
  const item = element("li", "movie");
  item.dataset.movieId = movie.movie_id;
  item.append(element("span", "title", movieLabel(movie)));
  if (!movie.known) {
    item.append(element("span", "hint", " (not in the model: cannot be rated)"));
    return item;
  }
  const select = element("select", "rating");
  select.setAttribute("aria-label", `Your rating of ${movie.title || movie.movie_id}`);
  for (const value of scaleValues()) select.append(new Option(`${value} ★`, String(value)));
  const button = element("button", "rate", "Rate");
  button.type = "button";
  button.addEventListener("click", () => rate(movie, Number(select.value)));
  item.append(select, button);
  return item;
}

function rate(movie, rating) {
  state.rated.set(movie.movie_id, { movie, rating });
  renderRated();
}

function renderRated() {
  const list = $("rated");
  list.replaceChildren();
  for (const [movieId, { movie, rating }] of state.rated) {
    const item = element("li", "movie");
    item.dataset.movieId = movieId;
    item.append(element("span", "title", movieLabel(movie)), element("strong", "", ` ${rating} ★`));
    const remove = element("button", "remove", "Remove");
    remove.type = "button";
    remove.addEventListener("click", () => {
      state.rated.delete(movieId);
      renderRated();
    });
    item.append(remove);
    list.append(item);
  }
  $("rated-empty").hidden = state.rated.size > 0;
  $("recommend").disabled = state.rated.size === 0;
}

// -- recommendations -------------------------------------------------------------------

async function recommendForRatings() {
  const ratings = [...state.rated.values()].map(({ movie, rating }) => ({
    movie_id: movie.movie_id,
    rating,
  }));
  await showRecommendations("your ratings", () =>
    api("/api/recommendations", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ratings, n: 10, explain: true }),
    }),
  );
}

async function recommendForUser(event) {
  event.preventDefault();
  const userId = $("user-id").value.trim();
  if (!userId) return;
  await showRecommendations(`user_id ${userId}`, () =>
    api(`/api/users/${encodeURIComponent(userId)}/recommendations?n=10&explain=true`),
  );
}

async function showRecommendations(who, request) {
  setStatus(`Asking for recommendations for ${who}…`);
  $("results").hidden = true;
  try {
    const result = await request();
    renderResults(result);
    const count = result.items.length;
    setStatus(count ? `Top ${count} for ${who}.` : `No recommendations for ${who}.`);
    $("results-note").textContent = [result.note, result.reason].filter(Boolean).join(". ");
  } catch (error) {
    setStatus(`Could not get recommendations: ${error.message}`, true);
  }
}

function renderResults(result) {
  const body = $("results").querySelector("tbody");
  body.replaceChildren();
  const largest = Math.max(
    1e-9,
    ...result.items.flatMap((item) => TERMS.map((t) => Math.abs(item.explanation?.[t] ?? 0))),
  );
  for (const item of result.items) {
    const row = element("tr");
    row.dataset.movieId = item.movie.movie_id;
    const movie = element("td", "movie");
    movie.append(element("span", "title", item.movie.title || `movie_id ${item.movie.movie_id}`));
    movie.append(element("span", "genres", item.movie.genres.join(", ")));
    row.append(element("td", "rank", String(item.rank)), movie);
    row.append(element("td", "prediction", item.prediction.toFixed(2)));
    row.append(explanationCell(item.explanation, largest));
    body.append(row);
  }
  $("results").hidden = result.items.length === 0;
}

function explanationCell(explanation, largest) {
  const cell = element("td", "why");
  if (!explanation) return cell;
  const bars = element("div", "bars");
  for (const term of TERMS) {
    const value = explanation[term];
    const bar = element("div", `bar ${term} ${value < 0 ? "negative" : "positive"}`);
    bar.style.width = `${(50 * Math.abs(value)) / largest}%`;
    bar.title = `${term.replace("_", " ")}: ${value >= 0 ? "+" : ""}${value.toFixed(3)}`;
    bars.append(bar);
  }
  const sum = TERMS.map((t) => `${t.replace("_", " ")} ${signed(explanation[t])}`).join(" ");
  cell.append(bars, element("div", "sum", `mu ${explanation.mu.toFixed(2)} ${sum} = ${explanation.raw.toFixed(2)}`));
  return cell;
}

function counted(count, noun) {
  return `${count.toLocaleString()} ${noun}${count === 1 ? "" : "s"}`;
}

function signed(value) {
  return `${value < 0 ? "−" : "+"} ${Math.abs(value).toFixed(2)}`;
}

// -- start -------------------------------------------------------------------------------

async function start() {
  $("search-form").addEventListener("submit", search);
  $("recommend").addEventListener("click", recommendForRatings);
  $("user-form").addEventListener("submit", recommendForUser);
  try {
    const health = await api("/api/health");
    state.scale = health.rating_scale;
    $("about").textContent =
      `${health.model} model: ${counted(health.known_users, "user")}, ` +
      `${counted(health.known_movies, "movie")}, ratings ${health.rating_scale.low}` +
      `–${health.rating_scale.high}` + (health.movie_metadata ? "" : " (no titles loaded)");
    const users = await api("/api/users?limit=50");
    for (const user of users.items) {
      $("user-ids").append(new Option(counted(user.n_ratings, "rating"), String(user.user_id)));
    }
    document.body.dataset.ready = "true";
  } catch (error) {
    setStatus(`The server did not answer: ${error.message}`, true);
  }
}

start();
