set -e
cd /tmp/rpmfx
rm -rf build out; mkdir -p build out
mkspec() { # name epoch version release srpm-name
cat > build/$1.spec <<SPEC
Name: $1
${2:+Epoch: $2}
Version: $3
Release: $4
Summary: vigil fixture
License: MIT
BuildArch: noarch
%description
vigil test fixture
%files
SPEC
rpmbuild -bb --define "_topdir /tmp/rpmfx/build/top" --define "_source_payload w9.gzdio" --define "_binary_payload w9.gzdio" build/$1.spec >/dev/null
}
cat > build/openssl.spec <<SPEC
Name: openssl
Epoch: 1
Version: 3.0.7
Release: 24.el9
Summary: vigil fixture
License: MIT
BuildArch: noarch
%description
vigil test fixture
%package libs
Summary: vigil fixture libs
%description libs
vigil test fixture
%files libs
SPEC
rpmbuild -bb --define "_topdir /tmp/rpmfx/build/top" build/openssl.spec >/dev/null
mkspec bash "" 5.1.8 6.el9_1
mkspec glibc "" 2.34 83.el9_3.7
for be in sqlite; do
  rm -rf out/$be; mkdir -p out/$be
  rpm --define "_db_backend $be" --dbpath /tmp/rpmfx/out/$be --initdb
  rpm --define "_db_backend $be" --dbpath /tmp/rpmfx/out/$be -i --nodeps --justdb --noscripts --nosignature build/top/RPMS/noarch/*.rpm
  rpm --define "_db_backend $be" --dbpath /tmp/rpmfx/out/$be -qa --qf '%{NAME} %{EPOCH} %{VERSION} %{RELEASE} %{SOURCERPM}\n'
done
ls -la out/*
