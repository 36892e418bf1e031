// Starts the vendored Swagger UI on the served OpenAPI document (see app/api/home.py).
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null, // no badge from the public validator: nothing leaves this host
  });
});
