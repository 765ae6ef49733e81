"""infra/ refers to real code: every job command (RayJob entrypoints, docs/cluster.md) names a real job
module, CLI flags, config preset and override keys; the RayJobs chain the pipeline through shared
storage; the RayService serve config imports a real app builder and deployment. Light: builds argparse
parsers and config dataclasses; nothing talks to GCP or Kubernetes, no Ray cluster is started.
"""

from __future__ import annotations

import argparse
import importlib
import inspect

import yaml

from tests.infra_helpers import (
    EXPECTED_JOBS,
    MOUNT,
    ROOT,
    job_commands,
    parse_job_args,
    ray_docs,
    uris,
)


# ----------------------------------------------------------------------------------------------- jobs
def check_job_config(where: str, module, ns: argparse.Namespace) -> None:
    """The preset exists and the overrides name real fields of the sections the job builds."""
    from jobs.config import CONFIG_DIR, load_config, resolve_config_path
    from modeling.typed_config import build_dataclass

    if getattr(ns, "config", None) is None:
        return
    path = resolve_config_path(ns.config)
    assert path.parent == CONFIG_DIR, (
        f"{where}: --config {ns.config} is not a preset in configs/ (the image has them)"
    )
    config = load_config(ns.config, list(ns.overrides))
    name = module.__name__
    if name == "jobs.prepare":
        from pipelines.prepare import PrepareConfig
        from pipelines.sources import parse_source_spec

        build_dataclass(PrepareConfig, config.get("prepare"))
        for spec in ns.source:
            parse_source_spec(spec)
    elif name == "jobs.tokenize":
        module.tokenize_config_from(config)
    elif name == "jobs.train_tokenizer":
        from jobs.training.tokenizer import job_from_config

        job = job_from_config(config, ns.data)
        assert not any(o.startswith("tokenizer_train.use_gpu=") for o in ns.overrides) or job.train.use_gpu
    elif name == "jobs.train_transformer":
        from jobs.training.transformer import TransformerTrainConfig

        train = build_dataclass(TransformerTrainConfig, config.get("transformer_train"))
        assert not any(o.startswith("transformer_train.use_gpu=") for o in ns.overrides) or train.use_gpu


def test_job_commands_use_real_modules_flags_presets_and_overrides():
    commands = job_commands()
    assert {argv[0] for _, argv in commands} >= set(EXPECTED_JOBS.values())
    for where, argv in commands:
        module, ns = parse_job_args(where, argv)
        check_job_config(where, module, ns)


def test_rayjob_entrypoints_chain_the_pipeline_through_shared_storage():
    """Each step reads what the previous one wrote; paths that must be local are on the bucket mount."""
    ns = {}
    commands = dict(job_commands())
    for path, _ in ray_docs("RayJob"):
        argv = commands[f"{path.name}: entrypoint"]
        assert argv[0] == EXPECTED_JOBS[path.name], f"{path.name} runs {argv[0]}"
        ns[argv[0]] = parse_job_args(path.name, argv)[1]
    prepare, train_tok = ns["jobs.prepare"], ns["jobs.train_tokenizer"]
    tokenize, train_tr = ns["jobs.tokenize"], ns["jobs.train_transformer"]
    assert prepare.out in uris(train_tok.data) and prepare.out in uris(tokenize.data)
    assert train_tok.out == tokenize.tokenizer == train_tr.tokenizer
    assert tokenize.out in uris(train_tr.data)
    # Checkpoints (and Ray Train's storage under them) are local-path only: they must be on the mount.
    for local in (train_tok.out, train_tr.out, tokenize.tokenizer):
        assert local.startswith(MOUNT + "/"), f"{local}: checkpoints must live on the shared mount {MOUNT}"
    for uri in (prepare.out, tokenize.out):
        assert uri.startswith("gs://BUCKET/") or uri.startswith(MOUNT + "/"), uri
    [(_, service)] = ray_docs("RayService")
    [app] = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert app["args"]["checkpoint"] == train_tr.out, "the endpoint serves what train-transformer wrote"
    encoder = tokenize.text_encoder or ""
    if encoder.startswith("t5:"):
        assert encoder[3:].startswith(MOUNT + "/"), "a local T5 must be on the mount every pod has"


# ----------------------------------------------------------------------------------------------- serve
def test_the_rayservice_serves_the_standalone_serve_config():
    """One config: `serve deploy infra/serve/phenaki.yaml` and the RayService deploy the same document, and its
    `args` are valid ServeArgs (no family-specific deployment names to edit)."""
    from jobs.serving.app import ServeArgs

    [(_, service)] = ray_docs("RayService")
    standalone = yaml.safe_load((ROOT / "infra" / "serve" / "phenaki.yaml").read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == standalone
    [app] = standalone["applications"]
    args = ServeArgs.model_validate(app["args"])
    assert args.api_keys_file and "deployments" not in app


def test_rayservice_serve_config_imports_a_real_app_builder():
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    [(path, service)] = ray_docs("RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    assert set(config) <= set(ServeDeploySchema.model_fields)
    for app in config["applications"]:
        assert set(app) <= set(ServeApplicationSchema.model_fields), f"unknown app fields {set(app)}"
        module_name, _, attr = app["import_path"].partition(":")
        assert attr, f"import_path {app['import_path']} must be module:attribute"
        assert (ROOT / (module_name.replace(".", "/") + ".py")).is_file()
        module = importlib.import_module(module_name)
        assert hasattr(module, attr), (
            f"{app['import_path']}: {module_name} has no {attr!r}. Serve calls an application builder with the "
            "serveConfigV2 `args` mapping as its single argument, e.g. "
            "`def app_builder(args: AppArgs) -> serve.Application` (AppArgs a pydantic model with the "
            "fields of `args`) that returns build_app(...)"
        )
        builder = getattr(module, attr)
        # Serve's rule (ray/serve/_private/api.py, call_user_app_builder_with_args_if_necessary): a builder
        # function takes exactly one parameter; a pydantic annotation validates `args`.
        params = list(inspect.signature(builder).parameters.values())
        assert inspect.isfunction(builder) and len(params) == 1, (
            f"{app['import_path']} must take one parameter"
        )
        annotation = params[0].annotation
        if isinstance(annotation, str):
            annotation = inspect.get_annotations(builder, eval_str=True)[params[0].name]
        if inspect.isclass(annotation) and hasattr(annotation, "model_validate"):
            annotation.model_validate(app.get("args") or {})
        from ray import serve

        for deployment in app.get("deployments") or []:
            assert set(deployment) <= set(DeploymentSchema.model_fields), f"unknown fields {set(deployment)}"
            found = [
                d
                for d in vars(module).values()
                if isinstance(d, serve.Deployment) and d.name == deployment["name"]
            ]
            assert found, f"{module_name} defines no Serve deployment named {deployment['name']!r}"
            scaling = deployment.get("autoscaling_config") or {}
            assert set(scaling) <= set(AutoscalingConfig.model_fields), f"unknown autoscaling {set(scaling)}"
            AutoscalingConfig(**scaling)
