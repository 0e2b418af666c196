// Paging through a listing with the API's cursor: forward with next_cursor, back with the
// cursors already seen (the API's cursors only go forward).

import { el, reportError } from "./dom.js";

export class Pager {
  // nav: the <nav> holding the buttons; noun: "events"; load(): loads this.cursor's page.
  constructor(nav, noun, size, load) {
    Object.assign(this, { nav, noun, size, load, cursors: [null], page: 0, next: null, shown: 0 });
  }

  get cursor() { return this.cursors[this.page]; }

  reset() {
    this.cursors = [null];
    this.page = 0;
  }

  // After a page loaded: its next_cursor and how many rows it shows.
  update(next, shown) {
    this.next = next;
    this.shown = shown;
    this.render();
  }

  render() {
    const first = this.page * this.size + 1;
    const range = this.shown ? `: ${this.noun} ${first}–${first + this.shown - 1}` : "";
    this.nav.replaceChildren(
      el("button", { type: "button", "data-testid": "newer", disabled: this.page === 0, onclick: () => this.turn(-1) },
        "← Newer"),
      el("span", { class: "muted", "data-testid": "page" }, `Page ${this.page + 1}${range}`),
      el("button", { type: "button", "data-testid": "older", disabled: !this.next, onclick: () => this.turn(1) },
        "Older →"));
  }

  async turn(step) {
    if (step > 0) this.cursors[this.page + 1] = this.next;
    this.page += step;
    try {
      await this.load();
      const [older, newer] = [this.nav.querySelector("[data-testid=older]"), this.nav.querySelector("[data-testid=newer]")];
      const wanted = step > 0 ? older : newer;
      (wanted.disabled ? (step > 0 ? newer : older) : wanted).focus({ preventScroll: true });
    } catch (error) {
      reportError(error);
    }
  }
}
