// Light or dark: the system's choice (prefers-color-scheme) unless the user picked one with the
// toggle, kept in local storage. A classic script in <head>, so the page is drawn in the right
// colours from the first frame; style.css does the rest through `color-scheme`.
"use strict";
(() => {
  const KEY = "megasr-theme";
  const root = document.documentElement;
  const system = window.matchMedia("(prefers-color-scheme: dark)");
  const stored = () => {
    const value = localStorage.getItem(KEY);
    return value === "light" || value === "dark" ? value : null;
  };
  const isDark = () => (stored() || (system.matches ? "dark" : "light")) === "dark";

  function apply() {
    const theme = stored();
    if (theme) root.dataset.theme = theme;
    else delete root.dataset.theme;
    const toggle = document.getElementById("theme-toggle");
    if (toggle) toggle.setAttribute("aria-pressed", String(isDark()));
  }

  apply();
  system.addEventListener("change", apply);
  document.addEventListener("DOMContentLoaded", () => {
    apply();
    document.getElementById("theme-toggle").addEventListener("click", () => {
      localStorage.setItem(KEY, isDark() ? "light" : "dark");
      apply();
    });
  });
})();
