// The pages' only script: draws the report's plots from their JSON and wires the copy buttons.
// Kept out of the HTML so that the pages run no inline script (Content-Security-Policy).
(function () {
  "use strict";
  function drawPlots() {
    document.querySelectorAll('script[type="application/json"][data-plot]').forEach(function (block) {
      var figure = JSON.parse(block.textContent);
      var target = document.getElementById(block.getAttribute("data-plot"));
      if (target && window.Plotly) {
        window.Plotly.newPlot(target, figure.data, figure.layout, figure.config);
      }
    });
  }
  function wireCopyButtons() {
    // The snippet and the spec are meant to be pasted, not retyped.
    document.querySelectorAll(".code button").forEach(function (button) {
      button.addEventListener("click", function () {
        var text = button.parentElement.querySelector("pre").innerText;
        navigator.clipboard.writeText(text).then(function () { button.textContent = "Copied"; });
      });
    });
  }
  function ready() { drawPlots(); wireCopyButtons(); }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", ready);
  } else {
    ready();
  }
})();
